// Package rclone is a tier.Target on any rclone remote ("remote:path"),
// driven through the rclone binary: uploads stream into `rclone rcat`,
// ranged reads use `rclone cat --offset --count`, listings `rclone lsjson`,
// deletes `rclone deletefile`, renames `rclone moveto`.
//
// rclone offers no BLAKE3, so Strata checks by reading back: every file is
// uploaded to a temporary name (<name>.tmp-<random>), the object's bytes are
// read back from the remote and checked against their BLAKE3, and only then
// moved to the final name. The layout is that of package tier, with
// the sum in <id>.b3 (b3sum format) beside the object. An interrupted
// upload leaves at most a temporary file, never a visible partial object.
//
// Remotes come from the environment or a config file, as rclone reads them
// (e.g. RCLONE_CONFIG=/dev/null RCLONE_CONFIG_DAV_TYPE=webdav
// RCLONE_CONFIG_DAV_URL=...); AWS_CA_BUNDLE is removed from rclone's
// environment, since rclone's S3 backend fails when it is set.
package rclone

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/tier"
)

var _ tier.Target = (*Target)(nil)

// Config configures an rclone tier.
type Config struct {
	Name   string   // tier name, a NATS subject token
	Remote string   // "remote:path" (path may be empty: "remote:")
	Binary string   // rclone executable; default "rclone" on PATH
	Env    []string // extra environment for rclone, KEY=VALUE (remote definitions)
	Flags  []string // extra global flags, e.g. "--contimeout=10s"
}

// EnsureDefaults fills in defaults.
func (c *Config) EnsureDefaults() {
	c.Binary = cmp.Or(c.Binary, "rclone")
	c.Remote = strings.TrimSuffix(c.Remote, "/")
}

// Validate checks the config.
func (c *Config) Validate() error {
	switch {
	case c.Name == "" || strings.ContainsAny(c.Name, ". *>\t\n"):
		return pipeline.NewConfigError("name", c.Name, errors.New("want a non-empty name without dots, spaces or wildcards"))
	case !strings.Contains(c.Remote, ":") || strings.HasPrefix(c.Remote, ":") && !strings.Contains(c.Remote[1:], ":"):
		return pipeline.NewConfigError("remote", c.Remote, errors.New(`want "remote:path"`))
	}
	for _, e := range c.Env {
		name, _, ok := strings.Cut(e, "=")
		if !ok || name == "" || strings.ContainsAny(name, " \t\n\x00") {
			return pipeline.NewConfigError("env", e, errors.New("want NAME=VALUE with an environment variable name"))
		}
	}
	return nil
}

// Target is an rclone tier.
type Target struct {
	cfg Config
	bin string
	env []string
	log *slog.Logger
}

// Open checks cfg and finds the rclone binary. It does not contact the
// remote. logger is the caller's, naming the tier already
// (the daemon passes logger.With("tier", name)).
func Open(cfg Config, logger *slog.Logger) (*Target, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("rclone tier %s: %w", cfg.Name, err)
	}
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_CA_BUNDLE=") {
			env = append(env, e)
		}
	}
	env = append(env, cfg.Env...)
	return &Target{cfg: cfg, bin: bin, env: env, log: logger}, nil
}

// Name implements tier.Target.
func (t *Target) Name() string { return t.cfg.Name }

// Kind implements tier.Target.
func (t *Target) Kind() string { return events.TierRclone }

// Location returns where the tier keeps object id: its rclone path
// (remote:path/objects/<aa>/<id>.zst). The store stage records it in
// object.stored (also for a copy it found already there).
func (t *Target) Location(id string) string { return t.Path(tier.ObjectKey(id)) }

// Path returns the rclone path of key (relative to the tier's root).
func (t *Target) Path(key string) string {
	if strings.HasSuffix(t.cfg.Remote, ":") {
		return t.cfg.Remote + key
	}
	return t.cfg.Remote + "/" + key
}

// command prepares an rclone invocation.
func (t *Target) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, t.bin, append(append([]string{}, t.cfg.Flags...), args...)...)
	cmd.Env = t.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs rclone with stdin and returns its stdout.
func (t *Target) run(ctx context.Context, op, id string, stdin io.Reader, args ...string) ([]byte, error) {
	cmd := t.command(ctx, args...)
	var out bytes.Buffer
	stderr := &limitedBuffer{max: 16 << 10}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, stderr
	if err := cmd.Run(); err != nil {
		return out.Bytes(), t.classify(ctx, op, id, err, stderr.String())
	}
	return out.Bytes(), nil
}

// classify maps an rclone failure to the sentinels: exit 3 (directory not
// found) and 4 (file not found) are ErrNotFound, exit 5 (temporary error)
// and network failures are ErrUnavailable.
func (t *Target) classify(ctx context.Context, op, id string, err error, stderr string) error {
	msg := strings.TrimSpace(lastLine(stderr))
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("rclone tier %s: %s %s: %w", t.cfg.Name, op, id, cerr)
	}
	var sentinel error
	var exit *exec.ExitError
	code := -1
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	}
	switch {
	case code == 3 || code == 4 || strings.Contains(stderr, "doesn't exist") || strings.Contains(stderr, "object not found"):
		sentinel = tier.ErrNotFound
	case code == 5 || networkError(stderr):
		sentinel = tier.ErrUnavailable
	}
	if sentinel != nil {
		return fmt.Errorf("rclone tier %s: %s %s: %w: %s", t.cfg.Name, op, id, sentinel, msg)
	}
	return fmt.Errorf("rclone tier %s: %s %s: %w: %s", t.cfg.Name, op, id, err, msg)
}

func networkError(stderr string) bool {
	for _, s := range []string{"connection refused", "dial tcp", "couldn't connect", "no such host",
		"i/o timeout", "connection reset", "network is unreachable", "broken pipe", "EOF",
		// Server-side failures (HTTP remotes): the server is there but
		// cannot serve now; a later try may succeed.
		"500 Internal Server Error", "502 Bad Gateway", "503 Service Unavailable", "504 Gateway Timeout",
		"429 Too Many Requests", "timeout awaiting response headers"} {
		if strings.Contains(stderr, s) {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// limitedBuffer keeps the last max bytes written.
type limitedBuffer struct {
	max int
	b   []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.b = append(l.b, p...)
	if len(l.b) > l.max {
		l.b = l.b[len(l.b)-l.max:]
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

func tempSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return ".tmp-" + hex.EncodeToString(b[:])
}

// Put implements tier.Target.
func (t *Target) Put(ctx context.Context, o tier.Object) (string, error) {
	if err := o.Validate(); err != nil {
		return "", fmt.Errorf("rclone tier %s: put: %w", t.cfg.Name, err)
	}
	final := t.Location(o.ID)
	info, err := t.Verify(ctx, o.ID)
	switch {
	case err == nil && info.PackedSum == o.PackedSum:
		if m, err := t.cat(ctx, "get manifest", o.ID, t.Path(tier.ManifestKey(o.ID))); err == nil && bytes.Equal(m, o.Manifest) {
			return final, nil
		}
		if err := t.putSmall(ctx, o.ID, tier.ManifestKey(o.ID), o.Manifest); err != nil {
			return "", err
		}
		return final, nil
	case err == nil || errors.Is(err, tier.ErrNotFound):
	case errors.Is(err, tier.ErrCorrupt):
		t.log.Warn("replacing corrupt copy", "object", o.ID, "err", err)
	default:
		return "", err
	}
	// Order: the packed bytes to a temporary name, read back and checked;
	// then the manifest and the sum; then the move that makes the object
	// visible. A failure before the move leaves any previous copy as it was.
	tmp := final + tempSuffix()
	if err := t.upload(ctx, o, tmp); err != nil {
		t.removeTemp(tmp)
		return "", err
	}
	err = t.checkRemote(ctx, o, tmp)
	if err == nil {
		err = t.putSmall(ctx, o.ID, tier.ManifestKey(o.ID), o.Manifest)
	}
	if err == nil {
		err = t.putSmall(ctx, o.ID, tier.SumKey(o.ID), tier.SumFile(o.ID, o.PackedSum))
	}
	if err == nil {
		err = t.move(ctx, o.ID, tmp, final, func() bool {
			info, err := t.Verify(ctx, o.ID)
			return err == nil && info.PackedSum == o.PackedSum
		})
	}
	if err != nil {
		t.removeTemp(tmp)
		return "", err
	}
	return final, nil
}

// move renames tmp to final with `rclone moveto`. rclone replaces an
// existing final by deleting it and then moving, so concurrent Puts of one
// object can make a move fail (the destination reappeared, or vanished):
// after a failure, done reports whether final already holds what this Put
// wanted (another Put got there), else the move is tried again.
func (t *Target) move(ctx context.Context, id, tmp, final string, done func() bool) error {
	var err error
	for range 3 {
		// --ignore-times: rclone would otherwise skip a move onto a file of
		// the same size and modification time, keeping the old bytes.
		if _, err = t.run(ctx, "move", id, nil, "moveto", "--ignore-times", tmp, final); err == nil {
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, tier.ErrUnavailable) {
			return err
		}
		if done() {
			return nil
		}
	}
	return err
}

// upload streams o's bytes into `rclone rcat tmp`. If the source fails or
// its bytes do not match, rclone is killed before it sees the end of its
// input, so it cannot complete the upload.
func (t *Target) upload(ctx context.Context, o tier.Object, tmp string) error {
	src, err := o.Open()
	if err != nil {
		return fmt.Errorf("rclone tier %s: put %s: open source: %w", t.cfg.Name, o.ID, err)
	}
	defer src.Close()
	cctx, kill := context.WithCancel(ctx)
	defer kill()
	cmd := t.command(cctx, "rcat", "--size", fmt.Sprint(o.PackedSize), tmp)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("rclone tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	stderr := &limitedBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("rclone tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	sink := &pipeWriter{w: stdin}
	_, cerr := io.CopyBuffer(sink, tier.NewVerifyingReader(src, o.PackedSize, o.PackedSum), make([]byte, 1<<20))
	if cerr != nil && sink.err != nil {
		// rclone stopped reading: it failed (the remote refused or broke
		// the upload). Its exit and stderr say why, not the broken pipe.
		stdin.Close()
		if werr := cmd.Wait(); werr != nil {
			return t.classify(ctx, "upload", o.ID, werr, stderr.String())
		}
		return fmt.Errorf("rclone tier %s: put %s: rclone stopped reading its input: %w", t.cfg.Name, o.ID, cerr)
	}
	if cerr != nil {
		kill() // before closing stdin: rclone must not see a clean end of input
		_ = cmd.Wait()
		stdin.Close()
		if ctx.Err() != nil {
			return fmt.Errorf("rclone tier %s: put %s: %w", t.cfg.Name, o.ID, ctx.Err())
		}
		return fmt.Errorf("rclone tier %s: put %s: %w", t.cfg.Name, o.ID, cerr)
	}
	if err := stdin.Close(); err != nil {
		kill()
		_ = cmd.Wait()
		return fmt.Errorf("rclone tier %s: put %s: %w", t.cfg.Name, o.ID, err)
	}
	if err := cmd.Wait(); err != nil {
		return t.classify(ctx, "upload", o.ID, err, stderr.String())
	}
	return nil
}

// pipeWriter remembers the error of a write to rclone's stdin, so that a
// failed upload is told apart from a failed source.
type pipeWriter struct {
	w   io.Writer
	err error
}

func (p *pipeWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if err != nil && p.err == nil {
		p.err = err
	}
	return n, err
}

// checkRemote reads path back from the remote (streaming) and checks it
// against o's size and sum.
func (t *Target) checkRemote(ctx context.Context, o tier.Object, path string) error {
	cctx, kill := context.WithCancel(ctx)
	defer kill()
	cmd := t.command(cctx, "cat", path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("rclone tier %s: read back %s: %w", t.cfg.Name, o.ID, err)
	}
	stderr := &limitedBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("rclone tier %s: read back %s: %w", t.cfg.Name, o.ID, err)
	}
	cerr := tier.Check(ctx, stdout, o.PackedSize, o.PackedSum)
	if cerr != nil && !errors.Is(cerr, tier.ErrCorrupt) {
		kill() // Check read to EOF otherwise: rclone ends by itself
	}
	werr := cmd.Wait()
	switch {
	case werr != nil: // a failed read is not evidence of damage
		return t.classify(ctx, "read back", o.ID, werr, stderr.String())
	case cerr != nil:
		return fmt.Errorf("rclone tier %s: put %s: read back: %w", t.cfg.Name, o.ID, cerr)
	}
	return nil
}

// putSmall writes a small file through a temporary name.
func (t *Target) putSmall(ctx context.Context, id, key string, b []byte) error {
	final := t.Path(key)
	tmp := final + tempSuffix()
	_, err := t.run(ctx, "put", id, bytes.NewReader(b), "rcat", "--size", fmt.Sprint(len(b)), tmp)
	if err == nil {
		err = t.move(ctx, id, tmp, final, func() bool {
			got, err := t.cat(ctx, "get", id, final)
			return err == nil && bytes.Equal(got, b)
		})
	}
	if err != nil {
		t.removeTemp(tmp)
	}
	return err
}

func (t *Target) removeTemp(tmp string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := t.run(ctx, "remove temporary", tmp, nil, "deletefile", tmp); err != nil && !errors.Is(err, tier.ErrNotFound) {
		t.log.Warn("temporary file left behind", "path", tmp, "err", err)
	}
}

func (t *Target) cat(ctx context.Context, op, id, path string) ([]byte, error) {
	return t.run(ctx, op, id, nil, "cat", path)
}

type entry struct {
	Path  string
	Size  int64
	IsDir bool
}

// size returns the size of the object's .zst.
func (t *Target) size(ctx context.Context, id string) (int64, error) {
	out, err := t.run(ctx, "stat", id, nil, "lsjson", "--files-only", "--no-mimetype", "--no-modtime", t.Path(tier.ObjectKey(id)))
	if err != nil {
		return 0, err
	}
	var ents []entry
	if err := json.Unmarshal(out, &ents); err != nil {
		return 0, fmt.Errorf("rclone tier %s: stat %s: lsjson output: %w", t.cfg.Name, id, err)
	}
	for _, e := range ents {
		if e.Path == id+".zst" && !e.IsDir {
			return e.Size, nil
		}
	}
	return 0, fmt.Errorf("rclone tier %s: stat %s: %w", t.cfg.Name, id, tier.ErrNotFound)
}

// GetRange implements tier.Target.
func (t *Target) GetRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error) {
	if err := tier.ValidateID(id); err != nil {
		return nil, fmt.Errorf("rclone tier %s: get: %w", t.cfg.Name, err)
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("rclone tier %s: get %s: bad range off %d n %d", t.cfg.Name, id, off, n)
	}
	size, err := t.size(ctx, id)
	if err != nil {
		return nil, err
	}
	if off+n > size {
		return nil, fmt.Errorf("rclone tier %s: get %s: bytes %d+%d of %d: %w", t.cfg.Name, id, off, n, size, tier.ErrRange)
	}
	return t.catRange(ctx, id, off, n)
}

// catRange reads n bytes at off of object id, of known size.
func (t *Target) catRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error) {
	if n == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	cctx, kill := context.WithCancel(ctx)
	cmd := t.command(cctx, "cat", "--offset", fmt.Sprint(off), "--count", fmt.Sprint(n), t.Path(tier.ObjectKey(id)))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		kill()
		return nil, fmt.Errorf("rclone tier %s: get %s: %w", t.cfg.Name, id, err)
	}
	stderr := &limitedBuffer{max: 16 << 10}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		kill()
		return nil, fmt.Errorf("rclone tier %s: get %s: %w", t.cfg.Name, id, err)
	}
	r := &catReader{t: t, ctx: ctx, id: id, cmd: cmd, stdout: stdout, stderr: stderr, kill: kill}
	return tier.ExactReader(r, n), nil
}

// catReader reads the stdout of `rclone cat`; at its end it waits for
// rclone and turns a failed exit into a read error.
type catReader struct {
	t      *Target
	ctx    context.Context
	id     string
	cmd    *exec.Cmd
	stdout io.Reader
	stderr *limitedBuffer
	kill   context.CancelFunc
	done   bool
	err    error
}

func (c *catReader) Read(p []byte) (int, error) {
	if c.done {
		return 0, c.err
	}
	k, err := c.stdout.Read(p)
	if err == io.EOF {
		c.done = true
		c.err = io.EOF
		if werr := c.cmd.Wait(); werr != nil {
			c.err = c.t.classify(c.ctx, "get", c.id, werr, c.stderr.String())
		}
		return k, c.err
	}
	return k, err
}

func (c *catReader) Close() error {
	if !c.done {
		c.done, c.err = true, errors.New("closed")
		c.kill()
		_ = c.cmd.Wait()
	}
	c.kill()
	return nil
}

// Manifest implements tier.Target.
func (t *Target) Manifest(ctx context.Context, id string) ([]byte, error) {
	if err := tier.ValidateID(id); err != nil {
		return nil, fmt.Errorf("rclone tier %s: manifest: %w", t.cfg.Name, err)
	}
	if _, err := t.size(ctx, id); err != nil {
		return nil, err
	}
	m, err := t.cat(ctx, "get manifest", id, t.Path(tier.ManifestKey(id)))
	if errors.Is(err, tier.ErrNotFound) {
		return nil, fmt.Errorf("rclone tier %s: object %s: manifest missing: %w", t.cfg.Name, id, tier.ErrCorrupt)
	}
	return m, err
}

// Stat implements tier.Target.
func (t *Target) Stat(ctx context.Context, id string) (tier.Info, error) {
	if err := tier.ValidateID(id); err != nil {
		return tier.Info{}, fmt.Errorf("rclone tier %s: stat: %w", t.cfg.Name, err)
	}
	size, err := t.size(ctx, id)
	if err != nil {
		return tier.Info{}, err
	}
	b, err := t.cat(ctx, "get sum", id, t.Path(tier.SumKey(id)))
	if errors.Is(err, tier.ErrNotFound) {
		return tier.Info{}, fmt.Errorf("rclone tier %s: object %s: sum file missing: %w", t.cfg.Name, id, tier.ErrCorrupt)
	}
	if err != nil {
		return tier.Info{}, err
	}
	sum, err := tier.ParseSum(id, b)
	if err != nil {
		return tier.Info{}, fmt.Errorf("rclone tier %s: %w: %w", t.cfg.Name, tier.ErrCorrupt, err)
	}
	return tier.Info{ID: id, PackedSize: size, PackedSum: sum}, nil
}

// Verify implements tier.Target.
func (t *Target) Verify(ctx context.Context, id string) (tier.Info, error) {
	info, err := t.Stat(ctx, id)
	if err != nil {
		return info, err
	}
	rc, err := t.catRange(ctx, id, 0, info.PackedSize)
	if err != nil {
		return info, err
	}
	defer rc.Close()
	if err := tier.Check(ctx, rc, info.PackedSize, info.PackedSum); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%w: %w", tier.ErrCorrupt, err)
		}
		return info, fmt.Errorf("rclone tier %s: verify %s: %w", t.cfg.Name, id, err)
	}
	return info, nil
}

// List implements tier.Target: one lsjson and one cat of all sums.
func (t *Target) List(ctx context.Context, fn func(tier.Info) error) error {
	root := t.Path("objects")
	out, err := t.run(ctx, "list", root, nil, "lsjson", "-R", "--files-only", "--no-mimetype", "--no-modtime", root)
	if errors.Is(err, tier.ErrNotFound) {
		return nil // nothing stored yet
	}
	if err != nil {
		return err
	}
	var ents []entry
	if err := json.Unmarshal(out, &ents); err != nil {
		return fmt.Errorf("rclone tier %s: list: lsjson output: %w", t.cfg.Name, err)
	}
	var found []tier.Info
	for _, e := range ents {
		dir, name, _ := strings.Cut(e.Path, "/")
		id, ok := strings.CutSuffix(name, ".zst")
		if !ok || tier.ValidateID(id) != nil || dir != id[:2] {
			continue
		}
		found = append(found, tier.Info{ID: id, PackedSize: e.Size})
	}
	if len(found) == 0 {
		return nil
	}
	sums, err := t.run(ctx, "list sums", root, nil, "cat", "--include", "*.b3", root)
	if err != nil && !errors.Is(err, tier.ErrNotFound) {
		return err
	}
	bySum := make(map[string]string)
	for _, line := range strings.Split(string(sums), "\n") {
		if m, err := tier.ParseSums([]byte(line)); err == nil {
			for id, s := range m {
				bySum[id] = s
			}
		}
	}
	for _, info := range found {
		info.PackedSum = bySum[info.ID]
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements tier.Target.
func (t *Target) Delete(ctx context.Context, id string) error {
	if err := tier.ValidateID(id); err != nil {
		return fmt.Errorf("rclone tier %s: delete: %w", t.cfg.Name, err)
	}
	for _, key := range []string{tier.ObjectKey(id), tier.ManifestKey(id), tier.SumKey(id)} {
		if _, err := t.run(ctx, "delete", id, nil, "--retries", "1", "deletefile", t.Path(key)); err != nil && !errors.Is(err, tier.ErrNotFound) {
			return err
		}
	}
	return nil
}
