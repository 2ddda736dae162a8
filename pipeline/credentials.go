package pipeline

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"
)

// Names of the files Strata keeps in the data directory.
const (
	CredentialsFile = "credentials.json"
	LockFile        = "strata.lock"
	JetStreamDir    = "jetstream"
)

// Users and their private inbox prefixes. The daemon's own user exists only
// in memory and connects only in-process.
const (
	DaemonUser        = "strata"
	CLIUser           = "cli"
	ReaderUser        = "reader"
	CLIInboxPrefix    = "_INBOX_cli"
	ReaderInboxPrefix = "_INBOX_ro"
)

// ErrNoDaemon is returned by Dial when no daemon holds the data directory.
var ErrNoDaemon = errors.New("pipeline: no strata daemon is running")

// Credentials is the content of DataDir/credentials.json (mode 0600): how
// local tools reach the daemon's NATS server.
type Credentials struct {
	// URL is the client URL ("" when the daemon runs without a listener).
	URL    string `json:"url"`
	CLI    User   `json:"cli"`
	Reader User   `json:"reader"`
	// Owner marks the daemon's own durable consumers (their metadata
	// carries it): a consumer with a stage's name but without it was made
	// by someone else (a reader may create consumers) and is replaced,
	// never adopted. No NATS user can read it.
	Owner string `json:"owner_token"`
	// TLS names the certificate a local client presents when the client
	// listener is TLS (nats.tls): the host's own, from its cluster bundle.
	TLS *ClientTLSFiles `json:"tls,omitempty"`
}

// ClientTLSFiles are the PEM files of a TLS client.
type ClientTLSFiles struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// same reports whether c and o are equal.
func (c Credentials) same(o Credentials) bool {
	if (c.TLS == nil) != (o.TLS == nil) || c.TLS != nil && *c.TLS != *o.TLS {
		return false
	}
	c.TLS, o.TLS = nil, nil
	return c == o
}

// User is a NATS user name and password.
type User struct {
	Name     string `json:"user"`
	Password string `json:"password"`
}

// LoadCredentials reads DataDir/credentials.json.
func LoadCredentials(dataDir string) (Credentials, error) {
	p := filepath.Join(dataDir, CredentialsFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return Credentials{}, fmt.Errorf("read credentials: %w", err)
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return Credentials{}, fmt.Errorf("credentials file %s is corrupt (delete it and restart the daemon to generate new ones): %w", p, err)
	}
	if c.CLI.Name != CLIUser || c.CLI.Password == "" || c.Reader.Name != ReaderUser || c.Reader.Password == "" {
		return Credentials{}, fmt.Errorf("credentials file %s is incomplete (delete it and restart the daemon to generate new ones)", p)
	}
	return c, nil
}

// loadOrCreateCredentials returns the credentials of dataDir, generating
// new passwords when there is no file yet. It does not write the file.
func loadOrCreateCredentials(dataDir string) (Credentials, error) {
	c, err := LoadCredentials(dataDir)
	if err == nil {
		c.Owner = cmp.Or(c.Owner, randomSecret()) // a file written before the token existed
		return c, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Credentials{}, err
	}
	return Credentials{
		CLI:    User{Name: CLIUser, Password: randomSecret()},
		Reader: User{Name: ReaderUser, Password: randomSecret()},
		Owner:  randomSecret(),
	}, nil
}

// writeCredentials writes c atomically with mode 0600: temp file, fsync,
// rename, fsync of the directory.
func writeCredentials(dataDir string, c Credentials) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	b = append(b, '\n')
	f, err := os.CreateTemp(dataDir, ".credentials-*.tmp")
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dataDir, CredentialsFile)); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	return syncDir(dataDir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// randomSecret returns 32 random hex characters (128 bits).
func randomSecret() string {
	b := make([]byte, 16)
	rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}

// daemonRunning reports whether a daemon holds the lock of dataDir.
func daemonRunning(dataDir string) (bool, error) {
	f, err := os.Open(filepath.Join(dataDir, LockFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check daemon lock: %w", err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("check daemon lock: %w", err)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false, nil
}

// Dial connects to the daemon running on dataDir over TCP as the cli user,
// with replies on the cli user's private inbox prefix. It is what the
// strata CLI uses. When no daemon runs the error wraps ErrNoDaemon.
// opts are applied after Strata's own (e.g. nats.ErrorHandler; by default
// asynchronous errors are only kept for nats.Conn.LastError).
func Dial(ctx context.Context, dataDir string, opts ...nats.Option) (*nats.Conn, error) {
	return dial(ctx, dataDir, CLIUser, opts)
}

// DialReader is Dial for the read-only reader user.
func DialReader(ctx context.Context, dataDir string, opts ...nats.Option) (*nats.Conn, error) {
	return dial(ctx, dataDir, ReaderUser, opts)
}

func dial(ctx context.Context, dataDir, user string, extra []nats.Option) (*nats.Conn, error) {
	noDaemon := fmt.Errorf("%w on data directory %s (start it with: strata run --data %s)", ErrNoDaemon, dataDir, dataDir)
	running, err := daemonRunning(dataDir)
	if err != nil {
		return nil, err
	}
	if !running {
		return nil, noDaemon
	}
	creds, err := LoadCredentials(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, noDaemon
	}
	if err != nil {
		return nil, err
	}
	if creds.URL == "" {
		return nil, fmt.Errorf("the strata daemon on data directory %s has no TCP listener (it was started with --port -1)", dataDir)
	}
	u, inbox := creds.CLI, CLIInboxPrefix
	if user == ReaderUser {
		u, inbox = creds.Reader, ReaderInboxPrefix
	}
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return nil, fmt.Errorf("connect to strata daemon: %w", context.DeadlineExceeded)
		}
	}
	opts := append([]nats.Option{
		nats.UserInfo(u.Name, u.Password),
		nats.CustomInboxPrefix(inbox),
		nats.Name("strata-" + user),
		nats.Timeout(timeout),
		nats.MaxReconnects(0),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
	}, extra...)
	if creds.TLS != nil {
		opts = append([]nats.Option{nats.ClientCert(creds.TLS.Cert, creds.TLS.Key), nats.RootCAs(creds.TLS.CA)}, opts...)
	}
	nc, err := nats.Connect(creds.URL, opts...)
	if errors.Is(err, nats.ErrNoServers) {
		return nil, fmt.Errorf("%w: %w", noDaemon, err)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to strata daemon at %s: %w", creds.URL, err)
	}
	return nc, nil
}
