package tiertest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startServer starts cmd, waits until addr accepts connections and stops
// the process in t.Cleanup.
func startServer(t testing.TB, cmd *exec.Cmd, addr string) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited before listening on %s: %v\n%s", cmd.Path, addr, err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not listen on %s after 30 s\n%s", cmd.Path, addr, out.String())
		}
	}
}

// LookGoTool finds a `go install`ed tool on PATH or in $(go env GOPATH)/bin,
// or skips the test (a failure under STRATA_REQUIRE_ALL=1).
func LookGoTool(t testing.TB, name, install string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(dir, "bin", name)
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	stratatest.Skip(t, "needs %s (go install %s)", name, install)
	return ""
}

// S3Server is a versitygw S3 server on loopback backed by a directory.
type S3Server struct {
	Endpoint  string // 127.0.0.1:port
	Dir       string // posix backend root: <Dir>/<bucket>/<key> are plain files
	AccessKey string
	SecretKey string
	buckets   atomic.Int64
}

// StartS3 starts versitygw (posix backend on a fresh directory, which must
// support user xattrs: ext4 or XFS, as /tmp here) for the test.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin := LookGoTool(t, "versitygw", "github.com/versity/versitygw/cmd/versitygw@v1.8.0")
	s := &S3Server{Dir: t.TempDir(), AccessKey: "strata-test", SecretKey: "strata-test-secret"}
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	cmd := exec.Command(bin, "--port", s.Endpoint, "--quiet", "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	startServer(t, cmd, s.Endpoint)
	return s
}

// NewBucket creates a fresh bucket and returns its name.
func (s *S3Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("strata-%d", s.buckets.Add(1))
	cl, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
	return name
}

// RcloneServer is `rclone serve webdav|sftp` on loopback serving Dir.
type RcloneServer struct {
	Proto  string   // "webdav" or "sftp"
	Dir    string   // the served directory: remote paths are files under it
	Remote string   // the remote's name, e.g. "strata_webdav"
	Env    []string // environment defining the remote for rclone clients
	Addr   string
}

// StartRclone starts `rclone serve <proto>` (webdav or sftp) on a fresh
// directory and returns the environment that defines a remote for it.
func StartRclone(t testing.TB, proto string) *RcloneServer {
	t.Helper()
	bin := stratatest.NeedTool(t, "rclone")
	s := &RcloneServer{Proto: proto, Dir: t.TempDir(), Remote: "strata" + proto}
	s.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	// No directory cache: tests damage files behind the server's back.
	args := []string{"serve", proto, s.Dir, "--addr", s.Addr, "--dir-cache-time", "0s"}
	up := strings.ToUpper(s.Remote)
	s.Env = []string{"RCLONE_CONFIG=/dev/null", "RCLONE_CONFIG_" + up + "_TYPE=" + proto}
	switch proto {
	case "webdav":
		s.Env = append(s.Env, "RCLONE_CONFIG_"+up+"_URL=http://"+s.Addr)
	case "sftp":
		obscured, err := exec.Command(bin, "obscure", "strata-pass").Output()
		if err != nil {
			t.Fatalf("rclone obscure: %v", err)
		}
		args = append(args, "--user", "strata", "--pass", "strata-pass", "--cache-dir", t.TempDir())
		host, port, _ := net.SplitHostPort(s.Addr)
		s.Env = append(s.Env, "RCLONE_CONFIG_"+up+"_HOST="+host, "RCLONE_CONFIG_"+up+"_PORT="+port,
			"RCLONE_CONFIG_"+up+"_USER=strata", "RCLONE_CONFIG_"+up+"_PASS="+strings.TrimSpace(string(obscured)),
			"RCLONE_CONFIG_"+up+"_SHELL_TYPE=none")
	default:
		t.Fatalf("StartRclone: unsupported protocol %q", proto)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "RCLONE_CONFIG=/dev/null")
	startServer(t, cmd, s.Addr)
	return s
}
