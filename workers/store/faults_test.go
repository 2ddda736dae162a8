package store_test

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/faulttest"
	"github.com/strata-hsm/strata/workers/tier/rclone"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// TestStoreRetriesCopyDamagedInTransit: a copy whose bytes are flipped on
// the way — on the read-back of an S3 upload, or in the upload itself to
// an rclone webdav remote — fails Put's read-back verification; the store
// stage retries (the staged copy is good) instead of giving the tier up,
// and the retry stores a good copy. Regression: the store stage took any
// ErrCorrupt from Put for bad staged bytes and dead-lettered the object,
// so a single bit flipped in transit kept a file from ever being released.
func TestStoreRetriesCopyDamagedInTransit(t *testing.T) {
	s3srv := tiertest.StartS3(t)
	dav := tiertest.StartRclone(t, "webdav")
	for _, c := range []struct {
		name string
		rule faulttest.Rule
		open func(t *testing.T, p *faulttest.Proxy) (faulty, direct tier.Target)
	}{
		// Skip 1: the first GET is Put's look for an existing copy.
		{"s3-flip-on-read-back", faulttest.Rule{Method: "GET", Path: ".zst", Fault: faulttest.FlipResponse, Middle: true, Skip: 1, Times: 1},
			func(t *testing.T, p *faulttest.Proxy) (tier.Target, tier.Target) {
				bucket := s3srv.NewBucket(t)
				open := func(ep string) tier.Target {
					tgt, err := s3.Open(s3.Config{Name: "cloud", Endpoint: ep, Bucket: bucket, AccessKey: s3srv.AccessKey,
						SecretKey: s3srv.SecretKey, NoTLS: true}, slog.New(slog.DiscardHandler))
					if err != nil {
						t.Fatal(err)
					}
					return tgt
				}
				return open(p.Addr), open(s3srv.Endpoint)
			}},
		{"webdav-flip-on-upload", faulttest.Rule{Method: "PUT", Path: ".zst", Fault: faulttest.FlipRequest, Middle: true, Times: 1},
			func(t *testing.T, p *faulttest.Proxy) (tier.Target, tier.Target) {
				open := func(addr string) tier.Target {
					tgt, err := rclone.Open(rclone.Config{Name: "cloud", Remote: "dav:" + t.Name(),
						Env: []string{"RCLONE_CONFIG=/dev/null", "RCLONE_CONFIG_DAV_TYPE=webdav", "RCLONE_CONFIG_DAV_URL=http://" + addr}},
						slog.New(slog.DiscardHandler))
					if err != nil {
						t.Fatal(err)
					}
					return tgt
				}
				return open(p.Addr), open(dav.Addr)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := s3srv.Endpoint
			if c.name[0] == 'w' {
				up = dav.Addr
			}
			p := faulttest.Start(t, up)
			faulty, direct := c.open(t, p)
			p.Set(c.rule)
			r := newRig(t)
			s := r.stage(60, 700<<10, 60, "/hot/flipped-on-the-way.dat")
			r.publish(s)
			r.run(r.storeStage(faulty, nil))
			checkFor(t, 30*time.Second, func() error {
				if len(r.storedOn(s.ev.ObjectID, "cloud")) == 0 {
					return errors.New("no object.stored yet")
				}
				return nil
			})
			if p.Hits(c.rule.Fault) != 1 {
				t.Fatalf("fault done %d times, want 1", p.Hits(c.rule.Fault))
			}
			r.wantNoDeadLetters()
			checkCopy(t, direct, s)
		})
	}
}
