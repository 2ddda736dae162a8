package pipeline

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline/cluster"
)

// Defaults of Config.
const (
	DefaultListenHost      = "127.0.0.1"
	DefaultPort            = 4250
	DefaultDedupWindow     = 10 * time.Minute
	DefaultReadyWait       = 10 * time.Second
	DefaultReaderConsumers = 64
)

// Special values of Config.Port.
const (
	// NoListener starts the server without any TCP listener: only
	// in-process connections (Server.Connect) reach it, and Dial fails.
	NoListener = -1
	// RandomPort listens on a free port chosen by the kernel; ClientURL and
	// credentials.json name it. Meant for tests.
	RandomPort = -2
)

// Config configures the embedded NATS server of one daemon.
type Config struct {
	// DataDir holds the lock file, credentials.json and the JetStream
	// store (DataDir/jetstream). Created (0700) if missing.
	DataDir string
	// Host is this host's subject token (strata.<Host>.…); default
	// events.HostToken(os.Hostname()).
	Host string
	// ListenHost is the address the client listener binds (default
	// 127.0.0.1: only local processes can connect).
	ListenHost string
	// Port is the client port: 0 means DefaultPort, NoListener (-1) no TCP
	// listener at all, RandomPort (-2) a free port.
	Port int
	// DedupWindow is how long the stream remembers Nats-Msg-Id values: a
	// republish of the same event id within it is dropped.
	DedupWindow time.Duration
	// Durables are the names of the daemon's stage consumers. The cli and
	// reader users may not create, update or pull from them.
	Durables []string
	// ReadyWait bounds how long Open waits for the server to start.
	ReadyWait time.Duration
	// ReaderConsumers is how many consumers outside subscribers may have
	// on a stream at once (default 64); with the daemon's durables and its
	// own readers it bounds each stream's consumers.
	ReaderConsumers int
	// ReaderDurables are the names of durable consumers outside
	// subscribers may keep; any other durable the daemon did not create
	// is removed (SweepConsumers). Ephemeral consumers are always allowed.
	ReaderDurables []string
	// Cluster, when Enabled, joins a NATS cluster: routes with mutual TLS
	// from its bundle, streams (and so the stage consumers) at
	// ClusterReplicas replicas, one owner token for the whole cluster.
	Cluster *cluster.Config
	// ClientTLS makes the client listener TLS with client certificates
	// from the cluster bundle (Cluster.Bundle). Required for a listener
	// off loopback.
	ClientTLS bool
	// ClusterWait bounds how long Open waits for the cluster to form
	// (the other hosts to start and elect a JetStream leader); default
	// DefaultClusterWait.
	ClusterWait time.Duration
}

// DefaultClusterWait is how long Open waits for a cluster's JetStream.
const DefaultClusterWait = 2 * time.Minute

// ClusterReplicas is the number of replicas of the streams in a cluster:
// a majority (2 of 3) survives the loss of any one host.
const ClusterReplicas = 3

// Clustered reports whether c joins a cluster.
func (c *Config) Clustered() bool { return c.Cluster.Enabled() }

// replicas is the streams' replica count.
func (c *Config) replicas() int {
	if c.Clustered() {
		return ClusterReplicas
	}
	return 1
}

// ownReaders is how many consumers the daemon and the CLI may hold at once
// on a stream besides the stages' durables (the projection, waits, follows).
const ownReaders = 32

// maxConsumers is the bound of each stream's consumers.
func (c *Config) maxConsumers() int { return len(c.Durables) + ownReaders + c.ReaderConsumers }

// EnsureDefaults fills the zero fields of c with their defaults.
func (c *Config) EnsureDefaults() {
	if c.Host == "" {
		name, err := os.Hostname()
		if err != nil {
			name = "localhost"
		}
		c.Host = events.HostToken(name)
	}
	c.ListenHost = cmp.Or(c.ListenHost, DefaultListenHost)
	c.Port = cmp.Or(c.Port, DefaultPort)
	c.DedupWindow = cmp.Or(c.DedupWindow, DefaultDedupWindow)
	c.ReadyWait = cmp.Or(c.ReadyWait, DefaultReadyWait)
	c.ReaderConsumers = cmp.Or(c.ReaderConsumers, DefaultReaderConsumers)
	c.ClusterWait = cmp.Or(c.ClusterWait, DefaultClusterWait)
}

// Validate checks c; call EnsureDefaults first. The error is a
// *ConfigError (keys: data_dir, host, nats.listen, nats.port, …).
func (c *Config) Validate() error {
	switch {
	case c.DataDir == "":
		return &ConfigError{"data_dir", c.DataDir, errors.New("required")}
	case !filepath.IsAbs(c.DataDir):
		return &ConfigError{"data_dir", c.DataDir, errors.New("want an absolute path")}
	case !events.ValidToken(c.Host):
		return &ConfigError{"host", c.Host, errors.New("want letters, digits, '-' or '_' (at most 64)")}
	case net.ParseIP(c.ListenHost) == nil && c.ListenHost != "localhost":
		return &ConfigError{"nats.listen", c.ListenHost, errors.New("want an IP address")}
	case c.ListenHost != "localhost" && !net.ParseIP(c.ListenHost).IsLoopback() && c.Port != NoListener && !c.ClientTLS:
		// Passwords would cross the network in clear.
		return &ConfigError{"nats.listen", c.ListenHost, errors.New("not a loopback address, and the client port has no TLS: clients would send their passwords in clear; " +
			"either listen on 127.0.0.1 (or ::1), or set nats.tls = true with a [cluster] bundle (strata cluster init, then strata cluster add HOST)")}
	case c.ClientTLS && (c.Cluster == nil || c.Cluster.Bundle == ""):
		return &ConfigError{"nats.tls", c.ClientTLS, errors.New("needs certificates: set [cluster] bundle to the directory strata cluster add HOST wrote")}
	case c.Port < RandomPort || c.Port > 65535:
		return &ConfigError{"nats.port", c.Port, errors.New("want 1-65535, -1 (no listener) or -2 (random)")}
	case c.DedupWindow < time.Second:
		return &ConfigError{"dedup_window", c.DedupWindow, errors.New("want at least 1s")}
	case c.ReadyWait <= 0:
		return &ConfigError{"ready_wait", c.ReadyWait, errors.New("want > 0")}
	case c.ReaderConsumers < 1 || c.ReaderConsumers > 10000:
		return &ConfigError{"nats.reader_consumers", c.ReaderConsumers, errors.New("want 1-10000")}
	}
	if c.Cluster != nil {
		if err := c.Cluster.Validate(); err != nil {
			var fe *cluster.FieldError
			if errors.As(err, &fe) {
				return &ConfigError{fe.Field, fe.Value, fe.Err}
			}
			return err
		}
	}
	if c.ClusterWait <= 0 {
		return &ConfigError{"cluster_wait", c.ClusterWait, errors.New("want > 0")}
	}
	for _, d := range c.Durables {
		if !events.ValidToken(d) {
			return &ConfigError{"durables", d, errors.New("want letters, digits, '-' or '_'")}
		}
	}
	for i, d := range c.ReaderDurables {
		if !events.ValidToken(d) || slices.Contains(c.Durables, d) {
			return &ConfigError{fmt.Sprintf("nats.reader_durables[%d]", i), d, errors.New("want letters, digits, '-' or '_', and not a stage's name")}
		}
	}
	return nil
}
