package faulttest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/faulttest"
	"github.com/strata-hsm/strata/workers/tier/rclone"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// rig is a tier reached through a fault proxy (Faulty) and the same tier
// reached directly (Direct), to judge what the faults left behind.
type rig struct {
	Kind   string
	Faulty tier.Target
	Direct tier.Target
	Proxy  *faulttest.Proxy
}

var bucketN atomic.Int64

func s3Rig(t *testing.T) rig {
	srv := tiertest.StartS3(t)
	bucket := srv.NewBucket(t)
	p := faulttest.Start(t, srv.Endpoint)
	open := func(endpoint string) tier.Target {
		tgt, err := s3.Open(s3.Config{Name: "cloud", Endpoint: endpoint, Bucket: bucket,
			AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, NoTLS: true, PartSize: 5 << 20, MaxRetries: 1,
			IdleTimeout: 2 * time.Second,
		}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return tgt
	}
	return rig{Kind: "s3", Faulty: open(p.Addr), Direct: open(srv.Endpoint), Proxy: p}
}

func webdavRig(t *testing.T) rig {
	srv := tiertest.StartRclone(t, "webdav")
	p := faulttest.Start(t, srv.Addr)
	root := fmt.Sprintf("t%d/strata", bucketN.Add(1))
	open := func(addr string) tier.Target {
		env := []string{"RCLONE_CONFIG=/dev/null", "RCLONE_CONFIG_DAV_TYPE=webdav", "RCLONE_CONFIG_DAV_URL=http://" + addr}
		tgt, err := rclone.Open(rclone.Config{Name: "dav", Remote: "dav:" + root, Env: env,
			Flags: []string{"--contimeout=2s", "--timeout=2s", "--low-level-retries=1", "--retries=1"}},
			slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		return tgt
	}
	return rig{Kind: "webdav", Faulty: open(p.Addr), Direct: open(srv.Addr), Proxy: p}
}

func rigs(t *testing.T, fn func(t *testing.T, r rig)) {
	// The rigs wait on servers and child processes, not the CPU: in
	// parallel.
	for kind, mk := range map[string]func(*testing.T) rig{"s3": s3Rig, "webdav": webdavRig} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			fn(t, mk(t))
		})
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// putFaults are the faults done to the upload of an object's packed bytes.
var putFaults = []faulttest.Rule{
	{Method: "PUT", Path: ".zst", Fault: faulttest.Latency, Delay: 300 * time.Millisecond},
	{Method: "PUT", Path: ".zst", Fault: faulttest.Error500},
	{Method: "PUT", Path: ".zst", Fault: faulttest.Reset},
	{Method: "PUT", Path: ".zst", Fault: faulttest.TruncateRequest, Middle: true},
	{Method: "PUT", Path: ".zst", Fault: faulttest.FlipRequest, Middle: true},
	{Method: "PUT", Path: ".zst", Fault: faulttest.Hang},
	// The read-back of the upload goes wrong, not the upload.
	{Method: "GET", Path: ".zst", Fault: faulttest.FlipResponse, Middle: true},
	{Method: "GET", Path: ".zst", Fault: faulttest.TruncateResponse, Middle: true},
	{Method: "GET", Path: ".zst", Fault: faulttest.Hang},
}

// TestPutThroughFaults: a Put through each fault either succeeds with a
// good copy, or fails — in bounded time, with an error that says the tier
// is unavailable or the copy is corrupt — and leaves no visible bad copy:
// the object is absent, or Verify proves it good. A later Put without the
// fault stores a good copy.
func TestPutThroughFaults(t *testing.T) {
	rigs(t, func(t *testing.T, r rig) {
		for i, f := range putFaults {
			t.Run(fmt.Sprintf("%s-%s", f.Method, f.Fault), func(t *testing.T) {
				o, data := tiertest.NewObject(uint64(100+i), 6<<20+12345)
				r.Proxy.Set(f)
				start := time.Now()
				_, err := r.Faulty.Put(ctxFor(t, 20*time.Second), o)
				took := time.Since(start)
				r.Proxy.Clear()
				t.Logf("%s %s: put after %v: %v (faults done: %d)", r.Kind, f.Fault, took.Round(time.Millisecond), err, r.Proxy.Hits(f.Fault))
				if took > 15*time.Second {
					t.Errorf("put took %v: a faulty tier held it", took)
				}
				if r.Proxy.Hits(f.Fault) == 0 {
					t.Fatalf("fault %s never done: the rule matches nothing", f.Fault)
				}
				// S3 signs the payload (streaming SigV4 on plain HTTP): the
				// server itself refuses a flipped upload.
				refused := r.Kind == "s3" && f.Fault == faulttest.FlipRequest && strings.Contains(fmt.Sprint(err), "signature")
				if err != nil && !refused && !errors.Is(err, tier.ErrUnavailable) && !errors.Is(err, tier.ErrCorrupt) {
					t.Errorf("put error %v: want it to wrap ErrUnavailable or ErrCorrupt", err)
				}
				info, verr := r.Direct.Verify(ctxFor(t, 20*time.Second), o.ID)
				switch {
				case err == nil && verr != nil:
					t.Fatalf("put succeeded, but the copy does not verify: %v", verr)
				case verr != nil && !errors.Is(verr, tier.ErrNotFound):
					t.Fatalf("failed put left a visible bad copy: verify: %v", verr)
				case verr == nil && info.PackedSum != o.PackedSum:
					t.Fatalf("copy has sum %s, want %s", info.PackedSum, o.PackedSum)
				}
				if _, err := r.Faulty.Put(ctxFor(t, 20*time.Second), o); err != nil {
					t.Fatalf("put without faults: %v", err)
				}
				got := readAll(t, r.Direct, o.ID, 0, o.PackedSize)
				if !bytes.Equal(got, data) {
					t.Fatal("stored bytes differ")
				}
			})
		}
	})
}

func readAll(t *testing.T, tgt tier.Target, id string, off, n int64) []byte {
	t.Helper()
	rc, err := tgt.GetRange(ctxFor(t, 20*time.Second), id, off, n)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var getFaults = []faulttest.Rule{
	{Method: "GET", Path: ".zst", Fault: faulttest.Latency, Delay: 300 * time.Millisecond},
	{Method: "GET", Path: ".zst", Fault: faulttest.Error500},
	{Method: "GET", Path: ".zst", Fault: faulttest.Reset},
	{Method: "GET", Path: ".zst", Fault: faulttest.TruncateResponse, Middle: true},
	{Method: "GET", Path: ".zst", Fault: faulttest.FlipResponse, Middle: true},
	{Method: "GET", Path: ".zst", Fault: faulttest.Hang},
}

// TestVerifyThroughFaults: Verify of a good copy through each read fault
// either proves it good or fails in bounded time; only damaged bytes (a
// flip) may be called corrupt — a cut or hung read says unavailable, so
// that scrub does not condemn a good copy for a network failure.
func TestVerifyThroughFaults(t *testing.T) {
	rigs(t, func(t *testing.T, r rig) {
		o, _ := tiertest.NewObject(7, 3<<20)
		if _, err := r.Direct.Put(ctxFor(t, 20*time.Second), o); err != nil {
			t.Fatal(err)
		}
		for _, f := range getFaults {
			t.Run(f.Fault.String(), func(t *testing.T) {
				r.Proxy.Set(f)
				start := time.Now()
				_, err := r.Faulty.Verify(ctxFor(t, 20*time.Second), o.ID)
				took := time.Since(start)
				r.Proxy.Clear()
				t.Logf("%s %s: verify after %v: %v", r.Kind, f.Fault, took.Round(time.Millisecond), err)
				if took > 15*time.Second {
					t.Errorf("verify took %v", took)
				}
				switch f.Fault {
				case faulttest.Latency:
					if err != nil {
						t.Errorf("verify through latency: %v", err)
					}
				case faulttest.FlipResponse:
					if !errors.Is(err, tier.ErrCorrupt) {
						t.Errorf("verify of flipped bytes: %v, want ErrCorrupt", err)
					}
				default:
					if err == nil || errors.Is(err, tier.ErrCorrupt) && !strings.Contains(err.Error(), "blake3") {
						t.Errorf("verify through %s: %v, want an error that is not ErrCorrupt", f.Fault, err)
					}
				}
			})
		}
	})
}
