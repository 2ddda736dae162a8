// Package s3 is the S3 tier: a tier.Target on any S3-compatible
// object store, through github.com/minio/minio-go/v7.
//
// Keys are <prefix>objects/<aa>/<id>.zst (the packed bytes, with their
// BLAKE3 in the user metadata x-amz-meta-strata-packed-blake3) and
// <prefix>objects/<aa>/<id>.json (the manifest). Uploads stream: objects
// larger than PartSize go up as a multipart upload that holds one part in
// memory at a time and becomes visible only when complete, so an
// interrupted upload never shows a partial object (abandoned parts are
// left to the bucket's AbortIncompleteMultipartUpload lifecycle rule). A
// Put returns only after reading the whole object back and checking its
// BLAKE3; a full read through GetRange is checked against the recorded
// BLAKE3 too, and ranged reads are verified per frame by the caller.
package s3

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/zeebo/blake3"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/workers/tier"
)

var _ tier.Target = (*Target)(nil)

// metaSum is the user metadata key holding the packed BLAKE3
// (x-amz-meta-strata-packed-blake3 on the wire).
const metaSum = "Strata-Packed-Blake3"

// Defaults.
const (
	DefaultPartSize   = 16 << 20
	minPartSize       = 5 << 20 // the S3 minimum for all parts but the last
	DefaultMaxRetries = 3
	// DefaultIdleTimeout is Config.IdleTimeout's default: above minio-go's
	// one minute for response headers, so a slow server is waited for.
	DefaultIdleTimeout = 2 * time.Minute
)

// Config configures an S3 tier.
type Config struct {
	Name     string // tier name, a NATS subject token
	Endpoint string // host[:port], e.g. "s3.eu-west-1.amazonaws.com" or "127.0.0.1:7070"
	Region   string // optional
	Bucket   string
	Prefix   string // optional key prefix; a trailing "/" is added
	// AccessKey and SecretKey default to $AWS_ACCESS_KEY_ID and
	// $AWS_SECRET_ACCESS_KEY (and SessionToken to $AWS_SESSION_TOKEN).
	AccessKey    string
	SecretKey    string
	SessionToken string
	NoTLS        bool  // plain HTTP (loopback or a trusted network only)
	PartSize     int64 // multipart part size, also the upload memory per Put; default 16 MiB, min 5 MiB
	MaxRetries   int   // retries of one request by minio-go; default 3
	// IdleTimeout bounds how long a request may make no progress at all
	// (no byte sent or received: a server that hangs mid-body, which
	// minio-go's own timeouts do not cover) before it fails as
	// ErrUnavailable; default DefaultIdleTimeout. Ignored with Transport.
	IdleTimeout time.Duration
	// Transport overrides the HTTP transport (tests, custom CAs); optional.
	Transport http.RoundTripper
}

// EnsureDefaults fills in defaults, including credentials from the AWS
// environment variables.
func (c *Config) EnsureDefaults() {
	if c.AccessKey == "" && c.SecretKey == "" {
		c.AccessKey, c.SecretKey = os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
		if c.SessionToken == "" {
			c.SessionToken = os.Getenv("AWS_SESSION_TOKEN")
		}
	}
	if c.Prefix != "" && !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	c.PartSize = cmp.Or(c.PartSize, DefaultPartSize)
	c.MaxRetries = cmp.Or(c.MaxRetries, DefaultMaxRetries)
	c.IdleTimeout = cmp.Or(c.IdleTimeout, DefaultIdleTimeout)
}

// Validate checks the config.
func (c *Config) Validate() error {
	switch {
	case c.Name == "" || strings.ContainsAny(c.Name, ". *>\t\n"):
		return pipeline.NewConfigError("name", c.Name, errors.New("want a non-empty name without dots, spaces or wildcards"))
	case c.Endpoint == "" || strings.Contains(c.Endpoint, "/"):
		return pipeline.NewConfigError("endpoint", c.Endpoint, errors.New("want host[:port] without scheme or path"))
	case c.Bucket == "":
		return pipeline.NewConfigError("bucket", c.Bucket, errors.New("required"))
	case strings.HasPrefix(c.Prefix, "/"):
		return pipeline.NewConfigError("prefix", c.Prefix, errors.New("must not start with /"))
	case c.AccessKey == "" || c.SecretKey == "":
		return pipeline.NewConfigError("access_key", c.AccessKey, errors.New("credentials required (config or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"))
	case c.PartSize < minPartSize:
		return pipeline.NewConfigError("part_size", c.PartSize, fmt.Errorf("want at least %d", minPartSize))
	case c.MaxRetries < 1:
		return pipeline.NewConfigError("max_retries", c.MaxRetries, errors.New("want at least 1"))
	case c.IdleTimeout < 100*time.Millisecond:
		return pipeline.NewConfigError("timeout", c.IdleTimeout, errors.New("want at least 100ms"))
	}
	return nil
}

// Target is an S3 tier.
type Target struct {
	cfg  Config
	cl   *minio.Client
	core minio.Core
	log  *slog.Logger
}

// Open checks cfg and returns the tier. It does not contact the server: an
// unreachable server shows as ErrUnavailable on each call. logger is the caller's, naming the tier already
// (the daemon passes logger.With("tier", name)).
func Open(cfg Config, logger *slog.Logger) (*Target, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	transport := cfg.Transport
	if transport == nil {
		tr, err := minio.DefaultTransport(!cfg.NoTLS)
		if err != nil {
			return nil, fmt.Errorf("s3 tier %s: %w", cfg.Name, err)
		}
		tr.DialContext = idleDialer(tr.DialContext, cfg.IdleTimeout)
		transport = tr
	}
	cl, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:      credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken),
		Secure:     !cfg.NoTLS,
		Region:     cfg.Region,
		Transport:  transport,
		MaxRetries: cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 tier %s: %w", cfg.Name, err)
	}
	return &Target{cfg: cfg, cl: cl, core: minio.Core{Client: cl}, log: logger}, nil
}

// Name implements tier.Target.
func (t *Target) Name() string { return t.cfg.Name }

// Kind implements tier.Target.
func (t *Target) Kind() string { return events.TierS3 }

// Bucket returns the bucket name.
func (t *Target) Bucket() string { return t.cfg.Bucket }

// Key returns the key of an object's packed bytes.
func (t *Target) Key(id string) string { return t.cfg.Prefix + tier.ObjectKey(id) }

// Location returns where the tier keeps object id: s3://bucket/key. The
// store stage records it in object.stored (also for a copy it found
// already there), and the export's location column carries it.
func (t *Target) Location(id string) string {
	return "s3://" + t.cfg.Bucket + "/" + t.Key(id)
}

// classify wraps err from an S3 call on object id with the right sentinel.
func (t *Target) classify(op, id string, err error) error {
	if err == nil {
		return nil
	}
	wrap := func(sentinel error) error {
		return fmt.Errorf("s3 tier %s: %s %s: %w: %w", t.cfg.Name, op, id, sentinel, err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("s3 tier %s: %s %s: %w", t.cfg.Name, op, id, err)
	}
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == minio.NoSuchKey || resp.Code == "NotFound":
		return wrap(tier.ErrNotFound)
	case resp.Code == "InvalidRange" || resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		return wrap(tier.ErrRange)
	case resp.Code == minio.NoSuchBucket || resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return wrap(tier.ErrUnavailable)
	}
	var netErr net.Error
	var urlErr *url.Error
	if errors.As(err, &netErr) || errors.As(err, &urlErr) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) {
		return wrap(tier.ErrUnavailable)
	}
	return fmt.Errorf("s3 tier %s: %s %s: %w", t.cfg.Name, op, id, err)
}

// Put implements tier.Target.
func (t *Target) Put(ctx context.Context, o tier.Object) (string, error) {
	if err := o.Validate(); err != nil {
		return "", fmt.Errorf("s3 tier %s: put: %w", t.cfg.Name, err)
	}
	info, err := t.Verify(ctx, o.ID)
	switch {
	case err == nil && info.PackedSum == o.PackedSum:
		if err := t.ensureManifest(ctx, o); err != nil {
			return "", err
		}
		return t.Location(o.ID), nil
	case err == nil || errors.Is(err, tier.ErrNotFound):
	case errors.Is(err, tier.ErrCorrupt):
		t.log.Warn("replacing corrupt copy", "object", o.ID, "err", err)
	default:
		return "", err
	}
	// The manifest goes first: the object becomes visible when its .zst
	// upload completes, with the manifest already in place.
	if err := t.putManifest(ctx, o); err != nil {
		return "", err
	}
	if err := t.upload(ctx, o); err != nil {
		return "", err
	}
	info, err = t.Verify(ctx, o.ID)
	if err != nil {
		return "", fmt.Errorf("read back after upload: %w", err)
	}
	if info.PackedSum != o.PackedSum {
		return "", fmt.Errorf("s3 tier %s: put %s: replaced concurrently by a copy with packed sum %s", t.cfg.Name, o.ID, info.PackedSum)
	}
	return t.Location(o.ID), nil
}

// upload streams o's packed bytes to its key. The source is checked on
// the way (tier.VerifyingReader): wrong bytes abort the upload before
// it completes.
func (t *Target) upload(ctx context.Context, o tier.Object) error {
	src, err := o.Open()
	if err != nil {
		return fmt.Errorf("s3 tier %s: put %s: open source: %w", t.cfg.Name, o.ID, err)
	}
	defer src.Close()
	_, err = t.cl.PutObject(ctx, t.cfg.Bucket, t.Key(o.ID), tier.NewVerifyingReader(src, o.PackedSize, o.PackedSum), o.PackedSize,
		minio.PutObjectOptions{
			PartSize:     uint64(t.cfg.PartSize),
			UserMetadata: map[string]string{metaSum: o.PackedSum},
			ContentType:  "application/zstd",
		})
	if err != nil {
		if errors.Is(err, tier.ErrCorrupt) {
			return fmt.Errorf("s3 tier %s: put %s: %w", t.cfg.Name, o.ID, err)
		}
		return t.classify("put", o.ID, err)
	}
	return nil
}

func (t *Target) manifestKey(id string) string { return t.cfg.Prefix + tier.ManifestKey(id) }

func (t *Target) putManifest(ctx context.Context, o tier.Object) error {
	_, err := t.cl.PutObject(ctx, t.cfg.Bucket, t.manifestKey(o.ID), strings.NewReader(string(o.Manifest)), int64(len(o.Manifest)),
		minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true})
	return t.classify("put manifest", o.ID, err)
}

func (t *Target) ensureManifest(ctx context.Context, o tier.Object) error {
	if m, err := t.getManifest(ctx, o.ID); err == nil && string(m) == string(o.Manifest) {
		return nil
	}
	return t.putManifest(ctx, o)
}

func (t *Target) getManifest(ctx context.Context, id string) ([]byte, error) {
	body, _, _, err := t.core.GetObject(ctx, t.cfg.Bucket, t.manifestKey(id), minio.GetObjectOptions{})
	if err != nil {
		return nil, t.classify("get manifest", id, err)
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		return nil, t.classify("get manifest", id, err)
	}
	return b, nil
}

// recordedSum returns the packed sum in an object's user metadata.
func recordedSum(oi minio.ObjectInfo) string {
	for k, v := range oi.UserMetadata {
		if strings.EqualFold(k, metaSum) || strings.EqualFold(k, "X-Amz-Meta-"+metaSum) {
			return v
		}
	}
	return oi.Metadata.Get("X-Amz-Meta-" + metaSum)
}

// GetRange implements tier.Target.
func (t *Target) GetRange(ctx context.Context, id string, off, n int64) (io.ReadCloser, error) {
	if err := tier.ValidateID(id); err != nil {
		return nil, fmt.Errorf("s3 tier %s: get: %w", t.cfg.Name, err)
	}
	if off < 0 || n < 0 {
		return nil, fmt.Errorf("s3 tier %s: get %s: bad range off %d n %d", t.cfg.Name, id, off, n)
	}
	if n == 0 { // HTTP cannot ask for zero bytes
		info, err := t.Stat(ctx, id)
		if err != nil {
			return nil, err
		}
		if off > info.PackedSize {
			return nil, fmt.Errorf("s3 tier %s: get %s: offset %d of %d: %w", t.cfg.Name, id, off, info.PackedSize, tier.ErrRange)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, fmt.Errorf("s3 tier %s: get %s: %w", t.cfg.Name, id, err)
	}
	body, oi, hdr, err := t.core.GetObject(ctx, t.cfg.Bucket, t.Key(id), opts)
	if err != nil {
		return nil, t.classify("get", id, err)
	}
	total, ok := totalSize(hdr.Get("Content-Range"))
	if !ok {
		total = oi.Size // a server that ignored the Range header sent it all
		if off != 0 {
			body.Close()
			return nil, fmt.Errorf("s3 tier %s: get %s: server ignored the range", t.cfg.Name, id)
		}
	}
	if off+n > total {
		body.Close()
		return nil, fmt.Errorf("s3 tier %s: get %s: bytes %d+%d of %d: %w", t.cfg.Name, id, off, n, total, tier.ErrRange)
	}
	rc := tier.ExactReader(body, n)
	if off == 0 && n == total {
		// A full read: check the whole BLAKE3 at the end.
		return &checkingReader{rc: rc, h: blake3.New(), want: recordedSum(oi), id: id, name: t.cfg.Name}, nil
	}
	return rc, nil
}

// totalSize parses the total of a "bytes a-b/total" Content-Range.
func totalSize(cr string) (int64, bool) {
	_, total, ok := strings.Cut(cr, "/")
	if !ok || total == "*" {
		return 0, false
	}
	var n int64
	if _, err := fmt.Sscan(total, &n); err != nil {
		return 0, false
	}
	return n, true
}

// checkingReader hashes a full read and fails at EOF on a mismatch.
type checkingReader struct {
	rc       io.ReadCloser
	h        hash.Hash
	want     string
	id, name string
}

func (c *checkingReader) Read(p []byte) (int, error) {
	k, err := c.rc.Read(p)
	c.h.Write(p[:k])
	if err == io.EOF {
		if got := hex.EncodeToString(c.h.Sum(nil)); got != c.want {
			return k, fmt.Errorf("s3 tier %s: object %s: %w: blake3 %s, recorded %q", c.name, c.id, tier.ErrCorrupt, got, c.want)
		}
	}
	return k, err
}

func (c *checkingReader) Close() error { return c.rc.Close() }

// Manifest implements tier.Target.
func (t *Target) Manifest(ctx context.Context, id string) ([]byte, error) {
	if _, err := t.Stat(ctx, id); err != nil {
		return nil, err
	}
	m, err := t.getManifest(ctx, id)
	if errors.Is(err, tier.ErrNotFound) {
		return nil, fmt.Errorf("s3 tier %s: object %s: manifest missing: %w", t.cfg.Name, id, tier.ErrCorrupt)
	}
	return m, err
}

// Stat implements tier.Target.
func (t *Target) Stat(ctx context.Context, id string) (tier.Info, error) {
	if err := tier.ValidateID(id); err != nil {
		return tier.Info{}, fmt.Errorf("s3 tier %s: stat: %w", t.cfg.Name, err)
	}
	oi, err := t.cl.StatObject(ctx, t.cfg.Bucket, t.Key(id), minio.StatObjectOptions{})
	if err != nil {
		return tier.Info{}, t.classify("stat", id, err)
	}
	return tier.Info{ID: id, PackedSize: oi.Size, PackedSum: recordedSum(oi)}, nil
}

// Verify implements tier.Target.
func (t *Target) Verify(ctx context.Context, id string) (tier.Info, error) {
	if err := tier.ValidateID(id); err != nil {
		return tier.Info{}, fmt.Errorf("s3 tier %s: verify: %w", t.cfg.Name, err)
	}
	body, oi, _, err := t.core.GetObject(ctx, t.cfg.Bucket, t.Key(id), minio.GetObjectOptions{})
	if err != nil {
		return tier.Info{}, t.classify("verify", id, err)
	}
	defer body.Close()
	info := tier.Info{ID: id, PackedSize: oi.Size, PackedSum: recordedSum(oi)}
	if info.PackedSum == "" {
		return info, fmt.Errorf("s3 tier %s: verify %s: %w: no %s metadata", t.cfg.Name, id, tier.ErrCorrupt, metaSum)
	}
	if err := tier.Check(ctx, body, oi.Size, info.PackedSum); err != nil {
		if errors.Is(err, tier.ErrCorrupt) {
			return info, fmt.Errorf("s3 tier %s: verify %s: %w", t.cfg.Name, id, err)
		}
		return info, t.classify("verify", id, err)
	}
	return info, nil
}

// List implements tier.Target. It costs one HEAD per object to read
// the recorded sum.
func (t *Target) List(ctx context.Context, fn func(tier.Info) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn fails
	for oi := range t.cl.ListObjects(ctx, t.cfg.Bucket, minio.ListObjectsOptions{Prefix: t.cfg.Prefix + "objects/", Recursive: true}) {
		if oi.Err != nil {
			return t.classify("list", t.cfg.Prefix+"objects/", oi.Err)
		}
		rest := strings.TrimPrefix(oi.Key, t.cfg.Prefix)
		id, ok := strings.CutSuffix(rest[strings.LastIndexByte(rest, '/')+1:], ".zst")
		if !ok || tier.ValidateID(id) != nil || rest != tier.ObjectKey(id) {
			continue
		}
		info, err := t.Stat(ctx, id)
		if errors.Is(err, tier.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Delete implements tier.Target.
func (t *Target) Delete(ctx context.Context, id string) error {
	if err := tier.ValidateID(id); err != nil {
		return fmt.Errorf("s3 tier %s: delete: %w", t.cfg.Name, err)
	}
	for _, key := range []string{t.Key(id), t.manifestKey(id)} {
		err := t.cl.RemoveObject(ctx, t.cfg.Bucket, key, minio.RemoveObjectOptions{})
		if err := t.classify("delete", id, err); err != nil && !errors.Is(err, tier.ErrNotFound) {
			return err
		}
	}
	return nil
}
