package pipeline

import (
	"cmp"
	"errors"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/strata-hsm/strata/events"
)

// Defaults of Config.
const (
	DefaultListenHost  = "127.0.0.1"
	DefaultPort        = 4250
	DefaultDedupWindow = 10 * time.Minute
	DefaultReadyWait   = 10 * time.Second
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
}

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
	case c.Port < RandomPort || c.Port > 65535:
		return &ConfigError{"nats.port", c.Port, errors.New("want 1-65535, -1 (no listener) or -2 (random)")}
	case c.DedupWindow < time.Second:
		return &ConfigError{"dedup_window", c.DedupWindow, errors.New("want at least 1s")}
	case c.ReadyWait <= 0:
		return &ConfigError{"ready_wait", c.ReadyWait, errors.New("want > 0")}
	}
	for _, d := range c.Durables {
		if !events.ValidToken(d) {
			return &ConfigError{"durables", d, errors.New("want letters, digits, '-' or '_'")}
		}
	}
	return nil
}
