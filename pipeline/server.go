package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline/cluster"
)

// Server is the daemon's embedded NATS server with JetStream, its streams,
// and the in-process connection the daemon's own components share.
//
// A Server owns DataDir exclusively (flock on DataDir/strata.lock) from
// Open until Close.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	ns       *server.Server
	password string // the daemon user's per-boot password
	lock     *os.File
	nc       *nats.Conn
	// raw is the JetStream context of nc; js is raw guarded by space
	// (spaceJS): what every component of the daemon publishes through.
	raw   jetstream.JetStream
	js    jetstream.JetStream
	creds Credentials
	// bundle is the host's cluster bundle (nil without one).
	bundle *cluster.Bundle

	// conds holds the daemon's conditions; space watches the data
	// directory (the JetStream store, the catalog and staging live there)
	// until spaceStop is called.
	conds     *Conditions
	space     *Space
	spaceStop context.CancelFunc
	spaceDone chan struct{}
	// jsBroken is set when nats-server logs a write error of the
	// JetStream store: a file store that failed a write refuses every
	// later one (and its publishers get no reply) until JetStream is
	// restarted, which the data directory's Space does before it ends its
	// condition (recoverJetStream). jsRestart serialises restarts.
	jsBroken  atomic.Bool
	jsRestart sync.Mutex

	closeOnce sync.Once
	closeErr  error
}

// Open starts the embedded server described by cfg and makes sure the
// streams exist. Errors are clear about the usual causes: a data directory
// that is not writable, another daemon on the same data directory, a port
// in use.
func Open(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Server, err error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, logger: logger, password: randomSecret()}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	if err := prepareDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	if s.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	s.conds = NewConditions(logger)
	s.space = NewSpace(SpaceConfig{Key: DataSpaceKey, Place: "data directory", Path: cfg.DataDir, Conditions: s.conds})
	s.space.OnRecover(s.recoverJetStream)
	sctx, stop := context.WithCancel(context.Background())
	s.spaceStop, s.spaceDone = stop, make(chan struct{})
	go func() { defer close(s.spaceDone); s.space.Run(sctx) }()
	if cfg.Port > 0 {
		if err := checkPort(cfg.ListenHost, cfg.Port); err != nil {
			return nil, err
		}
	}
	if s.creds, err = loadOrCreateCredentials(cfg.DataDir); err != nil {
		return nil, err
	}
	if cfg.Cluster != nil && cfg.Cluster.Bundle != "" {
		if s.bundle, err = cluster.LoadBundle(cfg.Cluster.Bundle, cfg.Host); err != nil {
			return nil, err
		}
		// One token for the whole cluster: each host's sweep must know
		// every host's stage durables for the daemon's.
		s.creds.Owner = s.bundle.Info.OwnerToken
		if cfg.ClientTLS {
			ca, cert, key := s.bundle.Files()
			s.creds.TLS = &ClientTLSFiles{CA: ca, Cert: cert, Key: key}
		}
	}
	if cfg.Clustered() {
		h, p, _ := net.SplitHostPort(cfg.Cluster.Listen)
		port, _ := strconv.Atoi(p)
		if err := checkPort(h, port); err != nil {
			return nil, fmt.Errorf("cluster.listen %s: %w", cfg.Cluster.Listen, err)
		}
	}

	opts, err := s.serverOptions()
	if err != nil {
		return nil, err
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("start nats server: %w", err)
	}
	s.ns = ns
	nl := &natsLogger{l: logger.With("component", "nats"), fatal: make(chan string, 1), space: s.space, broken: &s.jsBroken}
	ns.SetLoggerV2(nl, false, false, false)
	go ns.Start()
	if err := waitReady(ctx, ns, nl, cfg.ReadyWait); err != nil {
		if cfg.Port > 0 && strings.Contains(err.Error(), "address already in use") {
			return nil, fmt.Errorf("port %d on %s is in use: %w (choose another with --port)", cfg.Port, cfg.ListenHost, err)
		}
		return nil, fmt.Errorf("start nats server: %w", err)
	}

	if s.nc, err = s.Connect("strata-daemon"); err != nil {
		return nil, err
	}
	if s.raw, err = jetstream.New(s.nc); err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s.js = &spaceJS{JetStream: s.raw, space: s.space}
	if err := s.ensureStreams(ctx); err != nil {
		return nil, err
	}

	url := ""
	if cfg.Port != NoListener {
		url = ns.ClientURL()
	}
	if old, err := LoadCredentials(cfg.DataDir); err != nil || !old.same(Credentials{URL: url, CLI: s.creds.CLI, Reader: s.creds.Reader, Owner: s.creds.Owner, TLS: s.creds.TLS}) {
		s.creds.URL = url
		if err := writeCredentials(cfg.DataDir, s.creds); err != nil {
			return nil, err
		}
	}
	s.creds.URL = url
	logger.Info("event server ready", "data", cfg.DataDir, "url", url, "host", cfg.Host, "clustered", cfg.Clustered())
	return s, nil
}

// ensureStreams creates or updates the streams. In a cluster it waits (up
// to ClusterWait) for JetStream to have a leader and enough peers for
// the replicas: the other hosts may still be starting.
//
// Two behaviours of nats-server shape the wait (TestClusterR3 took 20 s
// and more to form on loopback without them):
//   - until a server knows the meta leader, its stream API requests go
//     unanswered (for the first seconds after start not even "temporarily
//     unavailable" comes back): a request sent then only ends with its
//     timeout. So no request is sent before JetStreamIsCurrent.
//   - when hosts that start together create the same stream at once, the
//     meta leader accepts every equal create but answers only one: the
//     others wait for a reply that never comes. Their retry is an update
//     of the stream that now exists, which is answered. So an attempt
//     waits clusterAttempt at first, doubling up to clusterAttemptMax for
//     a slow machine or a large stream being scaled to R3.
func (s *Server) ensureStreams(ctx context.Context) error {
	if !s.cfg.Clustered() {
		return ensureStreams(ctx, s.raw, s.cfg.DedupWindow, s.cfg.maxConsumers(), 1)
	}
	deadline := time.Now().Add(s.cfg.ClusterWait)
	attempt := clusterAttempt
	logged := false
	for {
		var err error
		if !s.ns.JetStreamIsCurrent() {
			err = errors.New("no JetStream meta leader yet")
		} else {
			actx, cancel := context.WithTimeout(ctx, attempt)
			err = ensureStreams(actx, s.raw, s.cfg.DedupWindow, s.cfg.maxConsumers(), s.cfg.replicas())
			cancel()
			if err == nil {
				return nil
			}
			if errors.Is(err, context.DeadlineExceeded) {
				attempt = min(2*attempt, clusterAttemptMax)
			}
		}
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cluster's JetStream did not form within %s (%d of its hosts must run, reachable on their cluster.routes with certificates from the same CA): %w",
				s.cfg.ClusterWait, ClusterReplicas/2+1, err)
		}
		if !logged {
			s.logger.Info("waiting for the cluster's other hosts", "routes", s.cfg.Cluster.Routes, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(clusterPoll):
		}
	}
}

// How ensureStreams waits for a cluster: the first attempt's bound, the
// largest, and the pause between attempts.
const (
	clusterAttempt    = 2 * time.Second
	clusterAttemptMax = 10 * time.Second
	clusterPoll       = 250 * time.Millisecond
)

// OwnerToken marks the daemon's own durable consumers (Runner.Owner,
// SweepConsumers). It is kept in the credentials file; no NATS user can
// read it.
func (s *Server) OwnerToken() string { return s.creds.Owner }

// serverOptions builds the nats-server options: JetStream under the data
// directory, three users, no signal handling.
// MaxPayload is the largest message the server accepts (NATS's default is
// 1 MiB).
const MaxPayload = 32 << 20

// jetStreamMaxStore is JetStream's storage limit: in effect none, the
// filesystem's room is the limit (watched by the data directory's Space,
// which stops new work below a reserve). Left unset, nats-server derives
// it from the free space at start (75 % of it, plus 75 % of what the
// store holds): a daemon started, or JetStream restarted, on a nearly
// full disk would then refuse every publish with "insufficient
// resources" however much room is made later.
const jetStreamMaxStore = 1 << 50

// DataSpaceKey is the condition key of the data directory's Space.
const DataSpaceKey = "space:data"

func (s *Server) serverOptions() (*server.Options, error) {
	cfg := s.cfg
	opts := &server.Options{
		ServerName:            "strata-" + cfg.Host,
		Host:                  cfg.ListenHost,
		Port:                  cfg.Port,
		NoSigs:                true,
		NoLog:                 false,
		JetStream:             true,
		StoreDir:              filepath.Join(cfg.DataDir, JetStreamDir),
		JetStreamMaxStore:     jetStreamMaxStore,
		DisableShortFirstPing: true,
		// Events are small; control replies (strata ls, archive of a large
		// tree) can be megabytes.
		MaxPayload: MaxPayload,
		Users: []*server.User{
			{
				Username:               DaemonUser,
				Password:               s.password,
				AllowedConnectionTypes: map[string]struct{}{jwt.ConnectionTypeInProcess: {}},
			},
			{
				Username:    CLIUser,
				Password:    s.creds.CLI.Password,
				Permissions: cliPermissions(cfg.Durables),
			},
			{
				Username:    ReaderUser,
				Password:    s.creds.Reader.Password,
				Permissions: readerPermissions(cfg.Durables),
			},
		},
	}
	switch cfg.Port {
	case NoListener:
		opts.DontListen = true
		opts.Port = 0
	case RandomPort:
		opts.Port = server.RANDOM_PORT
	}
	if cfg.Clustered() {
		if err := cluster.Apply(opts, cfg.Cluster, s.bundle); err != nil {
			return nil, err
		}
	}
	if cfg.ClientTLS {
		cluster.ApplyClientTLS(opts, s.bundle)
	}
	return opts, nil
}

// readAPI returns the JetStream API subjects a read-only client publishes
// to for reading stream: stream info and ephemeral (ordered) consumers.
func readAPI(stream string) []string {
	return []string{
		"$JS.API.STREAM.INFO." + stream,
		"$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>",
	}
}

// durableDeny returns the API subjects that would create, update or pull
// from the daemon's durables: CREATE is create-or-update, and pulling from a
// durable steals deliveries.
func durableDeny(durables []string) []string {
	deny := []string{"$JS.API.CONSUMER.DURABLE.CREATE.>"}
	for _, d := range durables {
		for _, stream := range []string{StreamEvents, StreamDeadLetter} {
			deny = append(deny,
				"$JS.API.CONSUMER.CREATE."+stream+"."+d,
				"$JS.API.CONSUMER.CREATE."+stream+"."+d+".>",
				"$JS.API.CONSUMER.MSG.NEXT."+stream+"."+d,
			)
		}
	}
	return deny
}

// readerPermissions: subscribe to events and its own inbox, read the event
// stream through ordered consumers, nothing else (FIELDNOTES "NATS
// security").
func readerPermissions(durables []string) *server.Permissions {
	pub := append([]string{"$JS.API.INFO", "$JS.API.STREAM.NAMES"}, readAPI(StreamEvents)...)
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub, Deny: durableDeny(durables)},
		Subscribe: &server.SubjectPermission{Allow: []string{events.AllEvents, ReaderInboxPrefix + ".>"}},
	}
}

// cliPermissions: what the reader may do, plus requests to the daemon's
// control subjects and reading the dead-letter stream.
func cliPermissions(durables []string) *server.Permissions {
	pub := []string{"$JS.API.INFO", "$JS.API.STREAM.NAMES", events.AllControl}
	pub = append(pub, readAPI(StreamEvents)...)
	pub = append(pub, readAPI(StreamDeadLetter)...)
	pub = append(pub, "$JS.API.CONSUMER.INFO."+StreamEvents+".*", "$JS.API.CONSUMER.LIST."+StreamEvents)
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub, Deny: durableDeny(durables)},
		Subscribe: &server.SubjectPermission{Allow: []string{events.AllEvents, CLIInboxPrefix + ".>"}},
	}
}

// prepareDataDir creates dir if needed and checks that it is writable.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data directory %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("data directory %s is not a directory", dir)
	}
	// It holds file names of every hot tree (the catalog), credentials and
	// staged copies of files: only its owner may look inside.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("data directory %s is open to other users (mode %04o): run chmod 700 %s (Strata refuses to keep file names and credentials there)", dir, perm, dir)
	}
	f, err := os.CreateTemp(dir, ".write-probe-*")
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	name := f.Name()
	f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	return nil
}

// lockDataDir takes an exclusive flock on dir/strata.lock and writes our
// pid into it. The lock lives as long as the returned file stays open (and
// dies with the process, however it ends).
func lockDataDir(dir string) (*os.File, error) {
	p := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory %s is not writable: %w", dir, err)
	}
	if err := flockRetry(f, unix.LOCK_EX, 2*time.Second); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b, _ := os.ReadFile(p)
			pid := strings.TrimSpace(string(b))
			if pid == "" {
				pid = "unknown"
			}
			return nil, fmt.Errorf("another strata daemon (pid %s) is running on data directory %s (lock %s)", pid, dir, p)
		}
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("write %s: %w", p, err)
		}
	}
	return f, nil
}

// flockRetry takes a flock of kind how on f, retrying for up to d while
// it is busy: a client that checks whether a daemon runs holds a shared
// lock for a moment (see daemonRunning), and a daemon starting in that
// moment must not take it for another daemon.
func flockRetry(f *os.File, how int, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkPort tells a port in use apart before the server tries it (the
// server itself would only report it after ReadyWait).
func checkPort(host string, port int) error {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("port %d on %s is in use: %w (choose another with --port)", port, host, err)
	}
	return l.Close()
}

// waitReady waits until ns accepts connections, a fatal error is logged by
// the server, ctx ends or d passes.
func waitReady(ctx context.Context, ns *server.Server, nl *natsLogger, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if ns.ReadyForConnections(50 * time.Millisecond) {
			return nil
		}
		select {
		case msg := <-nl.fatal:
			return errors.New(msg)
		default:
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s", d)
		}
	}
}

// Connect opens an in-process connection as the daemon's user, which may
// do everything. Only the daemon's own components use it.
func (s *Server) Connect(name string) (*nats.Conn, error) {
	logger := s.logger.With("conn", name)
	nc, err := nats.Connect("",
		nats.InProcessServer(s.ns),
		nats.UserInfo(DaemonUser, s.password),
		nats.Name(name),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			logger.Warn("nats async error", "subject", subj, "err", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect in-process as %s: %w", name, err)
	}
	return nc, nil
}

// JetStream returns the JetStream context of the daemon's shared
// in-process connection. Its publishes fail at once with a *SpaceError
// (ErrNoSpace) while the data directory is out of space, instead of
// waiting for acknowledgements a full store would never send.
func (s *Server) JetStream() jetstream.JetStream { return s.js }

// Conditions returns the daemon's conditions (status shows them); other
// places the daemon writes to (tiers, hot trees) report into it too.
func (s *Server) Conditions() *Conditions { return s.conds }

// Space returns the watcher of the data directory.
func (s *Server) Space() *Space { return s.space }

// recoverJetStream restarts JetStream if its store failed a write (or
// nats-server disabled it): the data directory's Space calls it once there
// is room again, before it ends its condition. The streams and consumers
// are recovered from the store; connections stay up (only JetStream API
// calls fail while it restarts, and their callers retry).
func (s *Server) recoverJetStream(ctx context.Context) error {
	s.jsRestart.Lock()
	defer s.jsRestart.Unlock()
	if !s.jsBroken.Load() && s.ns.JetStreamEnabled() {
		return nil
	}
	s.logger.Warn("restarting JetStream after a write error; the event log is kept", "data", s.cfg.DataDir)
	if s.ns.JetStreamEnabled() {
		if err := s.ns.ShutdownJetStream(); err != nil {
			return fmt.Errorf("restart jetstream: shutdown: %w", err)
		}
	}
	// Cleared before enabling: a write error while starting sets it again.
	s.jsBroken.Store(false)
	jcfg := &server.JetStreamConfig{StoreDir: filepath.Join(s.cfg.DataDir, JetStreamDir), MaxStore: jetStreamMaxStore, Strict: true}
	if err := s.ns.EnableJetStream(jcfg); err != nil {
		s.jsBroken.Store(true)
		return fmt.Errorf("restart jetstream: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ensureStreams(rctx, s.raw, s.cfg.DedupWindow, s.cfg.maxConsumers(), s.cfg.replicas()); err != nil {
		s.jsBroken.Store(true)
		return fmt.Errorf("restart jetstream: %w", err)
	}
	if s.jsBroken.Load() {
		return errors.New("restart jetstream: the store failed a write again")
	}
	s.logger.Info("JetStream restarted", "data", s.cfg.DataDir)
	return nil
}

// Conn returns the daemon's shared in-process connection.
func (s *Server) Conn() *nats.Conn { return s.nc }

// Clustered reports whether the server joined a cluster.
func (s *Server) Clustered() bool { return s.cfg.Clustered() }

// ClusterAddr is host:port of the route listener ("" alone).
func (s *Server) ClusterAddr() string {
	if !s.cfg.Clustered() {
		return ""
	}
	return s.cfg.Cluster.Listen
}

// Host returns the subject token of this host.
func (s *Server) Host() string { return s.cfg.Host }

// DataDir returns the data directory.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// ClientURL returns the TCP URL clients connect to ("" without listener).
func (s *Server) ClientURL() string { return s.creds.URL }

// Credentials returns the cli and reader credentials (as written to
// credentials.json).
func (s *Server) Credentials() Credentials { return s.creds }

// Close shuts the server down and releases the data directory. It is
// idempotent and safe on a nil Server. Stages should be drained first.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	s.closeOnce.Do(func() {
		if s.spaceStop != nil {
			s.spaceStop()
			<-s.spaceDone
		}
		if s.nc != nil {
			s.nc.Close()
		}
		if s.ns != nil {
			s.ns.Shutdown()
			s.ns.WaitForShutdown()
		}
		if s.lock != nil {
			if err := s.lock.Close(); err != nil { // closing drops the flock
				s.closeErr = fmt.Errorf("unlock data directory: %w", err)
			}
		}
	})
	return s.closeErr
}

// natsLogger routes the server's log to slog, one level quieter than the
// server would print: notices are Debug. Fatal messages (which in a
// standalone server would exit) are also handed to Open.
//
// A write error of the JetStream store marks JetStream broken (see
// Server.jsBroken); one caused by a full filesystem is reported to the
// data directory's Space instead of being logged, since the Space logs
// the condition once (nats-server logs a failed store per publish).
type natsLogger struct {
	l      *slog.Logger
	fatal  chan string
	space  *Space
	broken *atomic.Bool
}

// jsWriteError reports whether a nats-server message says a JetStream
// store failed a write (or JetStream was disabled): after it the store
// refuses writes until JetStream restarts. Pinned by
// TestJetStreamRecoversFromFullDisk.
func jsWriteError(msg string) bool {
	for _, s := range []string{"critical write error", "Critical write error", "failed to store a msg", "will be DISABLED", "disabling JetStream"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// storeTrouble handles messages about the store; it reports whether msg
// was one about a full filesystem (logged at Debug only).
func (n *natsLogger) storeTrouble(msg string) bool {
	if jsWriteError(msg) && n.broken != nil {
		n.broken.Store(true)
	}
	if n.space != nil && isNoSpaceText(msg) {
		n.space.Report(errors.New(msg))
		n.l.Debug(msg)
		return true
	}
	return false
}

func (n *natsLogger) Noticef(format string, v ...any) { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n *natsLogger) Warnf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	// By design: random in-memory passwords; and a 32 MiB payload limit
	// for the control replies of large trees (MaxPayload).
	if strings.HasPrefix(msg, "Plaintext passwords") || strings.HasPrefix(msg, "Maximum payloads over") {
		n.l.Debug(msg)
		return
	}
	if n.storeTrouble(msg) {
		return
	}
	n.l.Warn(msg)
}
func (n *natsLogger) Errorf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	if n.storeTrouble(msg) {
		return
	}
	n.l.Error(msg)
}
func (n *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	n.l.Error(msg)
	select {
	case n.fatal <- msg:
	default:
	}
}
func (n *natsLogger) Debugf(string, ...any) {}
func (n *natsLogger) Tracef(string, ...any) {}
