package s3_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/s3"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

func open(t testing.TB, srv *tiertest.S3Server, bucket, prefix string) *s3.Target {
	t.Helper()
	tgt, err := s3.Open(s3.Config{
		Name: "cloud", Endpoint: srv.Endpoint, Bucket: bucket, Prefix: prefix,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, NoTLS: true,
		PartSize: 5 << 20,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return tgt
}

// damage truncates or flips a byte of a stored object in versitygw's posix
// backend directory, behind the server's back.
func damage(t *testing.T, path string, how tiertest.Damage) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	switch how {
	case tiertest.Truncate:
		err = os.Truncate(path, st.Size()/2)
	case tiertest.FlipByte:
		b[len(b)/2] ^= 0x40
		err = os.WriteFile(path, b, 0o644) // keeps the inode and its xattrs
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestConformance(t *testing.T) {
	srv := tiertest.StartS3(t)
	for _, prefix := range []string{"", "strata/archive"} {
		t.Run(fmt.Sprintf("prefix=%q", prefix), func(t *testing.T) {
			tiertest.Run(t, tiertest.Suite{
				New: func(t *testing.T) tier.Target { return open(t, srv, srv.NewBucket(t), prefix) },
				Damage: func(t *testing.T, tgt tier.Target, id string, how tiertest.Damage) {
					s := tgt.(*s3.Target)
					damage(t, filepath.Join(srv.Dir, s.Bucket(), filepath.FromSlash(s.Key(id))), how)
				},
				LargeSize: 12 << 20, // three 5 MiB parts: interrupted after the first
			})
		})
	}
}

func TestMetadataAndFullReadCheck(t *testing.T) {
	srv := tiertest.StartS3(t)
	bucket := srv.NewBucket(t)
	tgt := open(t, srv, bucket, "p")
	o, _ := tiertest.NewObject(5, 100<<10)
	loc, err := tgt.Put(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if want := "s3://" + bucket + "/p/" + tier.ObjectKey(o.ID); loc != want {
		t.Fatalf("location %s, want %s", loc, want)
	}
	// A full read through GetRange checks the recorded BLAKE3.
	damage(t, filepath.Join(srv.Dir, bucket, "p", filepath.FromSlash(tier.ObjectKey(o.ID))), tiertest.FlipByte)
	_, err = tiertest.ReadRange(t, tgt, o.ID, 0, o.PackedSize)
	if !errors.Is(err, tier.ErrCorrupt) {
		t.Fatalf("full read of a damaged object: %v, want ErrCorrupt", err)
	}
}

func TestUnavailable(t *testing.T) {
	tgt, err := s3.Open(s3.Config{
		Name: "cloud", Endpoint: fmt.Sprintf("127.0.0.1:%d", tiertest.FreePort(t)), Bucket: "strata",
		AccessKey: "k", SecretKey: "s", NoTLS: true, MaxRetries: 1,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tiertest.CheckUnavailable(t, tgt)
}

func TestMissingBucketIsUnavailable(t *testing.T) {
	srv := tiertest.StartS3(t)
	tiertest.CheckUnavailable(t, open(t, srv, "no-such-bucket", ""))
}

func TestConfig(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "envkey")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
	good := s3.Config{Name: "cloud", Endpoint: "127.0.0.1:9", Bucket: "b"}
	if _, err := s3.Open(good, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("credentials from the environment: %v", err)
	}
	for field, c := range map[string]s3.Config{
		"name":      {Endpoint: "h:1", Bucket: "b"},
		"endpoint":  {Name: "cloud", Endpoint: "http://h:1/", Bucket: "b"},
		"bucket":    {Name: "cloud", Endpoint: "h:1"},
		"part_size": {Name: "cloud", Endpoint: "h:1", Bucket: "b", PartSize: 1 << 20},
		"prefix":    {Name: "cloud", Endpoint: "h:1", Bucket: "b", Prefix: "/abs"},
	} {
		_, err := s3.Open(c, slog.New(slog.DiscardHandler))
		var ve *s3.ConfigValidationError
		if !errors.As(err, &ve) || ve.Field != field {
			t.Errorf("config %+v: %v, want an error naming %s", c, err, field)
		}
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	if _, err := s3.Open(good, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("open without credentials: no error")
	}
}
