package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/cluster"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
)

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// openCluster starts n servers (hosts h0…) that form a cluster with
// bundles from caDir, in parallel (each waits for the others), with a TLS
// client listener.
func openCluster(t *testing.T, caDir string, n int) []*pipeline.Server {
	t.Helper()
	ports := freePorts(t, n)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	srvs := make([]*pipeline.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		host := fmt.Sprintf("h%d", i)
		bundle, err := cluster.Add(caDir, host, cluster.AddOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := pipeline.Config{DataDir: filepath.Join(t.TempDir(), "data"), Host: host, Port: pipeline.RandomPort, ClientTLS: true,
			Cluster: &cluster.Config{Listen: fmt.Sprintf("127.0.0.1:%d", ports[i]), Routes: routes, Bundle: bundle}, ClusterWait: time.Minute}
		wg.Go(func() {
			srvs[i], errs[i] = pipeline.Open(context.Background(), cfg, pipelinetest.Logger(t))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host h%d: %v", i, err)
		}
	}
	for _, s := range srvs {
		t.Cleanup(func() { s.Close() })
	}
	return srvs
}

// TestClusterR3: three servers join a cluster over mutual-TLS routes with
// certificates from cluster.Init/Add; the event stream is R3 with a
// leader and two current replicas; an event published on one host is
// read on every other; a publish with an id already in the stream is
// recorded once; the owner token is the cluster's; the reader credential
// of one host, over its TLS client listener, reads another host's events;
// a plaintext client is refused, and so is a client with a certificate
// from another CA.
func TestClusterR3(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	caDir := filepath.Join(t.TempDir(), "ca")
	info, err := cluster.Init(caDir, "test")
	if err != nil {
		t.Fatal(err)
	}
	srvs := openCluster(t, caDir, 3)

	s, err := srvs[0].JetStream().Stream(ctx, pipeline.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	si, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.Config.Replicas != 3 || si.Cluster == nil || si.Cluster.Leader == "" || len(si.Cluster.Replicas) != 2 {
		t.Fatalf("event stream: replicas %d, cluster %+v; want R3 with a leader and two replicas", si.Config.Replicas, si.Cluster)
	}
	for i, srv := range srvs {
		if srv.OwnerToken() != info.OwnerToken {
			t.Fatalf("h%d: owner token %q, want the cluster's", i, srv.OwnerToken())
		}
	}

	em := pipeline.NewEmitter(srvs[0].JetStream(), "h0", "test")
	ev := &events.FilePinned{Path: "/data/x"}
	seq, err := em.Emit(ctx, ev, "once")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := em.Emit(ctx, ev, "once"); err != nil || again != seq {
		t.Fatalf("republish of the same id: seq %d, %v; want %d (deduplicated)", again, err, seq)
	}
	for i, srv := range srvs {
		last, err := pipeline.LastSeq(ctx, srv.JetStream())
		if err != nil || last != seq {
			t.Fatalf("h%d: last seq %d, %v; want %d", i, last, err, seq)
		}
	}

	// The reader of h2, with h2's certificate, over TCP: reads h0's event.
	dir2 := srvs[2].DataDir()
	nc, err := pipeline.DialReader(ctx, dir2)
	if err != nil {
		t.Fatalf("reader of h2: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := js.OrderedConsumer(ctx, pipeline.StreamEvents, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("reader ordered consumer: %v", err)
	}
	m, err := oc.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil || !strings.HasPrefix(m.Subject(), "strata.h0.") {
		t.Fatalf("reader of h2: %v, %v; want h0's event", m, err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second) // a denied publish gets no acknowledgement
	defer pcancel()
	if _, err := js.Publish(pctx, "strata.h2.file.pinned", []byte("{}")); err == nil {
		t.Fatal("reader published to strata.>: want refused")
	}
	permissionError(t, nc, "strata.h2.file.pinned")
	if last, err := pipeline.LastSeq(ctx, srvs[2].JetStream()); err != nil || last != seq {
		t.Fatalf("last seq %d, %v after the reader's refused publish; want %d", last, err, seq)
	}

	creds, err := pipeline.LoadCredentials(dir2)
	if err != nil || creds.TLS == nil {
		t.Fatalf("credentials of h2: %+v, %v; want its TLS files", creds, err)
	}
	// Plaintext: no certificate, no TLS.
	if c, err := nats.Connect(creds.URL, nats.UserInfo(creds.Reader.Name, creds.Reader.Password), nats.Timeout(5*time.Second), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("plaintext client with the reader's password: connected, want refused")
	}
	// TLS without a client certificate.
	if c, err := nats.Connect(creds.URL, nats.UserInfo(creds.Reader.Name, creds.Reader.Password), nats.RootCAs(creds.TLS.CA),
		nats.Timeout(5*time.Second), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("TLS client without a certificate: connected, want refused")
	}
	// A certificate from another CA.
	other := filepath.Join(t.TempDir(), "other")
	if _, err := cluster.Init(other, "test"); err != nil {
		t.Fatal(err)
	}
	ob, err := cluster.Add(other, "h2", cluster.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := nats.Connect(creds.URL, nats.UserInfo(creds.Reader.Name, creds.Reader.Password), nats.RootCAs(creds.TLS.CA),
		nats.ClientCert(filepath.Join(ob, cluster.CertFile), filepath.Join(ob, cluster.KeyFile)),
		nats.Timeout(5*time.Second), nats.MaxReconnects(0)); err == nil {
		c.Close()
		t.Fatal("client with another CA's certificate: connected, want refused")
	}
}

// TestClusterConfigErrors: a route listener without a bundle, a listener
// off loopback without TLS, TLS without a bundle, and a bundle issued for
// another host are refused with the key and the fix.
func TestClusterConfigErrors(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if _, err := cluster.Init(caDir, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.Init(caDir, "test"); !errors.Is(err, cluster.ErrExists) {
		t.Fatalf("second init: %v, want ErrExists", err)
	}
	bundle, err := cluster.Add(caDir, "nas1", cluster.AddOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{caDir, bundle} {
		fi, _ := os.Stat(p)
		if fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s: mode %04o, want 0700", p, fi.Mode().Perm())
		}
	}
	for _, p := range []string{filepath.Join(caDir, cluster.CAKeyFile), filepath.Join(bundle, cluster.KeyFile), filepath.Join(bundle, cluster.CertFile), filepath.Join(bundle, cluster.ClusterFile)} {
		fi, _ := os.Stat(p)
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %04o, want 0600", p, fi.Mode().Perm())
		}
	}
	// A bundle written elsewhere (--out) is private; the directory it is
	// written in keeps its mode.
	shared := filepath.Join(t.TempDir(), "usb")
	if err := os.Mkdir(shared, 0o700); err != nil || os.Chmod(shared, 0o755) != nil { // whatever the umask
		t.Fatal(err)
	}
	if out, err := cluster.Add(caDir, "nas3", cluster.AddOptions{Out: filepath.Join(shared, "nas3")}); err != nil {
		t.Fatal(err)
	} else if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o700 {
		t.Fatalf("%s: mode %04o, want 0700", out, fi.Mode().Perm())
	}
	if fi, _ := os.Stat(shared); fi.Mode().Perm() != 0o755 {
		t.Fatalf("%s (the parent of --out): mode %04o, want 0755 as it was", shared, fi.Mode().Perm())
	}
	for _, tc := range []struct {
		name, key, fix string
		cfg            pipeline.Config
	}{
		{"off loopback without TLS", "nats.listen", "nats.tls", pipeline.Config{ListenHost: "0.0.0.0"}},
		{"TLS without bundle", "nats.tls", "strata cluster add", pipeline.Config{ClientTLS: true}},
		{"routes without bundle", "cluster.bundle", "strata cluster init", pipeline.Config{Cluster: &cluster.Config{Listen: "127.0.0.1:6250"}}},
		{"routes without listen", "cluster.listen", "host:port", pipeline.Config{Cluster: &cluster.Config{Routes: []string{"nats://127.0.0.1:1"}, Bundle: bundle}}},
		{"bad route", "cluster.routes[0]", "nats://", pipeline.Config{Cluster: &cluster.Config{Listen: "127.0.0.1:6250", Routes: []string{"10.0.0.1:6250"}, Bundle: bundle}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DataDir = "/d"
			tc.cfg.EnsureDefaults()
			err := tc.cfg.Validate()
			var ce *pipeline.ConfigError
			if !errors.As(err, &ce) || ce.Key != tc.key || !strings.Contains(err.Error(), tc.fix) {
				t.Fatalf("Validate: %v; want a ConfigError on %s naming %q", err, tc.key, tc.fix)
			}
		})
	}
	cfg := pipeline.Config{DataDir: filepath.Join(t.TempDir(), "data"), Host: "nas2", Port: pipeline.NoListener,
		Cluster: &cluster.Config{Listen: fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0]), Bundle: bundle}}
	if s, err := pipeline.Open(context.Background(), cfg, pipelinetest.Logger(t)); err == nil || !strings.Contains(err.Error(), "strata cluster add nas2") {
		s.Close()
		t.Fatalf("bundle of nas1 on nas2: %v, want refused naming strata cluster add nas2", err)
	}
	os.Chmod(bundle, 0o755)
	cfg.Host = "nas1"
	if s, err := pipeline.Open(context.Background(), cfg, pipelinetest.Logger(t)); err == nil || !strings.Contains(err.Error(), "chmod 700") {
		s.Close()
		t.Fatalf("bundle open to others: %v, want refused naming chmod 700", err)
	}
}
