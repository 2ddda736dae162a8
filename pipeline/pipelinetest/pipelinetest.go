// Package pipelinetest starts a real embedded JetStream server for tests:
// RunServer(t) gives each test its own server on t.TempDir(), shut down in
// t.Cleanup.
//
// Only tests import this package.
package pipelinetest

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/strata-hsm/strata/pipeline"
)

// Option changes the server configuration RunServer uses.
type Option func(*pipeline.Config)

// WithTCP makes the server listen on a random port on 127.0.0.1 (by
// default it has no TCP listener, only in-process connections).
func WithTCP() Option { return func(c *pipeline.Config) { c.Port = pipeline.RandomPort } }

// WithHost sets the host token (default "test").
func WithHost(host string) Option { return func(c *pipeline.Config) { c.Host = host } }

// WithDataDir uses dir instead of a fresh t.TempDir().
func WithDataDir(dir string) Option { return func(c *pipeline.Config) { c.DataDir = dir } }

// WithConfig applies f to the configuration.
func WithConfig(f func(*pipeline.Config)) Option { return Option(f) }

// RunServer starts a server on a fresh data directory and closes it in
// t.Cleanup. Its log goes to t.Log at Warn level and above.
func RunServer(t testing.TB, opts ...Option) *pipeline.Server {
	t.Helper()
	cfg := pipeline.Config{
		DataDir: t.TempDir(),
		Host:    "test",
		Port:    pipeline.NoListener,
	}
	for _, o := range opts {
		o(&cfg)
	}
	// A data directory is its owner's alone; t.TempDir() is not.
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("test server: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := pipeline.Open(ctx, cfg, Logger(t))
	if err != nil {
		t.Fatalf("start test server: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close test server: %v", err)
		}
	})
	return s
}

// Logger returns a logger that writes Warn and above to t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}
