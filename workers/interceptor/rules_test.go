//go:build linux

package interceptor_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/workers/interceptor"
	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestDenyErrnos: why a deny rule answers EPERM and not EACCES. The
// kernel takes only some errnos in a FAN_DENY_ERRNO answer: a raw
// pre-content group holds cat's read, an answer with EACCES is refused
// (EINVAL), and the EPERM answer that follows reaches cat.
func TestDenyErrnos(t *testing.T) {
	stratatest.NeedRoot(t)
	cat := stratatest.NeedTool(t, "cat")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			mnt := stratatest.LoopMount(t, fs, 512<<20)
			path := filepath.Join(mnt, "f")
			if err := os.WriteFile(path, []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			gfd, err := unix.FanotifyInit(unix.FAN_CLASS_PRE_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY|unix.O_LARGEFILE)
			if err != nil {
				stratatest.Skip(t, "fanotify pre-content group: %v", err)
			}
			defer unix.Close(gfd)
			if err := unix.FanotifyMark(gfd, unix.FAN_MARK_ADD, unix.FAN_PRE_ACCESS, unix.AT_FDCWD, path); err != nil {
				stratatest.Skip(t, "FAN_PRE_ACCESS mark (Linux 6.14): %v", err)
			}
			cmd := exec.Command(cat, path)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			n, err := unix.Read(gfd, buf)
			if err != nil || n < 24 {
				t.Fatalf("read fanotify event: %d bytes, %v", n, err)
			}
			efd := int32(uint32(buf[16]) | uint32(buf[17])<<8 | uint32(buf[18])<<16 | uint32(buf[19])<<24) // metadata.fd
			respond := func(errno unix.Errno) error {
				var r [8]byte
				v := uint32(unix.FAN_DENY) | uint32(errno)<<unix.FAN_ERRNO_SHIFT
				for i := range 4 {
					r[i] = byte(uint32(efd) >> (8 * i))
					r[4+i] = byte(v >> (8 * i))
				}
				_, err := unix.Write(gfd, r[:])
				return err
			}
			if err := respond(unix.EACCES); !errors.Is(err, unix.EINVAL) {
				t.Errorf("answer with EACCES: %v, want EINVAL (refused)", err)
			}
			if err := respond(unix.EPERM); err != nil {
				t.Fatalf("answer with EPERM: %v", err)
			}
			unix.Close(int(efd))
			if err := cmd.Wait(); err == nil || !strings.Contains(stderr.String(), "Operation not permitted") {
				t.Fatalf("cat after a deny with EPERM: %v: %s", err, stderr.String())
			}
		})
	}
}

// runAs runs a real program with the given credentials (nil: root) and
// returns its stdout, its stderr and its error.
func runAs(t *testing.T, cred *syscall.Credential, name string, args ...string) ([]byte, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	return stdout.Bytes(), stderr.String(), err
}

// TestRuleDeny: tar under a deny rule cannot open a stub (EPERM: see
// TestDenyErrnos), and nothing is recalled; dd under another cannot write
// into one; cat, which no rule names, still gets the bytes (the original
// ones), and then tar can archive the recalled file.
func TestRuleDeny(t *testing.T) {
	tarBin := stratatest.NeedTool(t, "tar")
	forEach(t, func(t *testing.T, fs string, mode interceptor.Mode) {
		e := newEnv(t, fs, mode, func(c *interceptor.Config) {
			c.Rules = []interceptor.Rule{{Name: "backup", Exe: []string{"tar"}, Action: interceptor.ActionDeny},
				{Name: "no-writes", Comm: []string{"dd"}, Action: interceptor.ActionDeny}}
		})
		dir := filepath.Join(e.mnt, "tree")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		small, big := content(11, 300<<10), content(12, 9<<20)
		makeStub(t, e.it, e.src, filepath.Join(dir, "small"), small, 0o644)
		makeStub(t, e.it, e.src, filepath.Join(dir, "big"), big, 0o644)

		// (GNU tar reads nothing when it writes to /dev/null.)
		_, stderr, err := runAs(t, nil, tarBin, "-cf", "-", "-C", e.mnt, "tree")
		if err == nil || strings.Count(stderr, "Operation not permitted") != 2 {
			t.Fatalf("tar of two stubs under a deny rule: %v: %q; want two files refused with EPERM", err, stderr)
		}
		if n := e.src.bytes.Load(); n != 0 {
			t.Fatalf("a denied tar made the source serve %d bytes", n)
		}
		st := e.it.RuleStats()
		if len(st) != 2 || st[0].Name != "backup" || st[0].Denied < 2 {
			t.Fatalf("rule stats %+v, want backup with 2 or more denials", st)
		}
		// A write is an access too: dd, denied, cannot write into a stub.
		if _, stderr, err := runAs(t, nil, "dd", "if=/dev/zero", "of="+filepath.Join(dir, "small"), "bs=4096", "count=1", "conv=notrunc", "status=none"); err == nil || !strings.Contains(stderr, "Operation not permitted") {
			t.Fatalf("dd into a stub under a deny rule: %v: %q", err, stderr)
		}
		if n := e.src.bytes.Load(); n != 0 {
			t.Fatalf("a denied dd made the source serve %d bytes", n)
		}

		sameBytes(t, "cat of the big stub", mustRun(t, "cat", filepath.Join(dir, "big")), big)
		e.comp.waitComplete(t, filepath.Join(dir, "big"))
		out := mustRun(t, tarBin, "-cf", "-", "-C", e.mnt, "tree/big")
		if !bytes.Contains(out, big[:1<<20]) {
			t.Fatal("tar of the recalled file does not hold its bytes")
		}
		if _, stderr, err := runAs(t, nil, tarBin, "-cf", "-", "-C", e.mnt, "tree/small"); err == nil || !strings.Contains(stderr, "Operation not permitted") {
			t.Fatalf("tar of the small stub after the other was recalled: %v: %q", err, stderr)
		}
		if n := e.src.bytes.Load(); n != int64(len(big)) {
			t.Fatalf("source served %d bytes, want %d (the big stub, once)", n, len(big))
		}
		sameBytes(t, "cat of the small stub dd could not write", mustRun(t, "cat", filepath.Join(dir, "small")), small)
	})
}

// TestRuleUID: a deny rule for one uid stops that uid's programs (cat run
// with another uid through SysProcAttr.Credential) and no other.
func TestRuleUID(t *testing.T) {
	const denied, allowed = 4242, 4243
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.Rules = []interceptor.Rule{{Name: "indexer", UID: []int64{denied}, Action: interceptor.ActionDeny}}
			})
			// The loop mount lies in the test's temporary directories
			// (0700): let the other uids walk down to it.
			for d := filepath.Dir(e.mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			a, b := filepath.Join(e.mnt, "a"), filepath.Join(e.mnt, "b")
			da, db := content(21, 6<<20), content(22, 200<<10)
			makeStub(t, e.it, e.src, a, da, 0o644)
			makeStub(t, e.it, e.src, b, db, 0o644)

			for _, p := range []string{a, b} {
				_, stderr, err := runAs(t, &syscall.Credential{Uid: denied, Gid: denied}, "cat", p)
				if err == nil || !strings.Contains(stderr, "Operation not permitted") {
					t.Fatalf("cat %s as uid %d: %v: %q, want EPERM", p, denied, err, stderr)
				}
			}
			if n := e.src.bytes.Load(); n != 0 {
				t.Fatalf("denied reads made the source serve %d bytes", n)
			}
			out, stderr, err := runAs(t, &syscall.Credential{Uid: allowed, Gid: allowed}, "cat", a)
			if err != nil {
				t.Fatalf("cat as uid %d: %v: %s", allowed, err, stderr)
			}
			sameBytes(t, fmt.Sprintf("cat as uid %d", allowed), out, da)
			c := e.comp.waitComplete(t, a)
			if c.Process != "cat" {
				t.Fatalf("completion %+v", c)
			}
			sameBytes(t, "cat as root", mustRun(t, "cat", b), db)
		})
	}
}

// TestRuleThrottle: dd under a throttle rule of 8 MiB/s reads a 28 MiB
// stub with correct bytes, no faster than the rule allows (the first 4
// MiB chunk is free, each next one is paid for), and its recall fetches
// only what dd reads. cat, with no rule, reads a stub of the same size
// at full speed, and a throttled stub that cat touches loses its throttle.
func TestRuleThrottle(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	const rate, size, chunk = 8 << 20, 28 << 20, interceptor.DefaultChunkSize
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.Rules = []interceptor.Rule{{Name: "slow-dd", Comm: []string{"dd"}, Action: interceptor.ActionThrottle, BytesPerSec: rate}}
			})
			slow, fast := filepath.Join(e.mnt, "slow"), filepath.Join(e.mnt, "fast")
			ds, df := content(31, size), content(32, size)
			idSlow := makeStub(t, e.it, e.src, slow, ds, 0o644)
			makeStub(t, e.it, e.src, fast, df, 0o644)

			start := time.Now()
			sameBytes(t, "cat (no rule)", mustRun(t, "cat", fast), df)
			catTook := time.Since(start)

			start = time.Now()
			out := mustRun(t, "dd", "if="+slow, "bs=1M", "status=none")
			ddTook := time.Since(start)
			sameBytes(t, "throttled dd", out, ds)
			c := e.comp.waitComplete(t, slow)
			want := time.Duration(float64(size-chunk) / rate * float64(time.Second))
			t.Logf("%s: cat (no rule) %v, dd throttled to %d MiB/s %v (at least %v)", fs, catTook, rate>>20, ddTook, want)
			if ddTook < want-100*time.Millisecond {
				t.Fatalf("throttled dd read %d MiB in %v: faster than %d MiB/s allows (%v)", size>>20, ddTook, rate>>20, want)
			}
			if got := e.src.objectBytes(idSlow); got != size || c.Bytes != size {
				t.Fatalf("throttled recall fetched %d bytes, completion %d; want %d", got, c.Bytes, size)
			}
			st := e.it.RuleStats()
			if len(st) != 1 || st[0].Throttled == 0 || st[0].Bytes != size || st[0].Waited < want/2 {
				t.Fatalf("rule stats %+v", st)
			}

			// A stub dd starts and cat then reads: cat is not held to
			// dd's budget.
			mixed := filepath.Join(e.mnt, "mixed")
			dm := content(33, size)
			makeStub(t, e.it, e.src, mixed, dm, 0o644)
			sameBytes(t, "dd of the first MiB", mustRun(t, "dd", "if="+mixed, "bs=1M", "count=1", "status=none"), dm[:1<<20])
			start = time.Now()
			sameBytes(t, "cat after dd", mustRun(t, "cat", mixed), dm)
			if took := time.Since(start); took >= want {
				t.Fatalf("cat of a stub dd had started took %v: held to dd's throttle (%v for the rest)", took, want)
			}
			e.comp.waitComplete(t, mixed)
			// Only dd's first chunk was charged to the rule.
			if st := e.it.RuleStats(); st[0].Bytes != size+chunk {
				t.Fatalf("rule charged %d bytes, want %d (the first stub and dd's chunk of the second)", st[0].Bytes, size+chunk)
			}
		})
	}
}

// TestRuleHeadOnly: head and tail under a head-only rule get the bytes
// that are resident and EPERM for anything that needs a recall, which
// they never start; once the file is back they read it all.
func TestRuleHeadOnly(t *testing.T) {
	stratatest.NeedTool(t, "head")
	stratatest.NeedTool(t, "tail")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.Rules = []interceptor.Rule{{Name: "probe", Comm: []string{"head", "tail"}, Action: interceptor.ActionHeadOnly}}
			})
			path := filepath.Join(e.mnt, "media.bin")
			data := content(41, 16<<20)
			makeStub(t, e.it, e.src, path, data, 0o644)

			if _, stderr, err := runAs(t, nil, "head", "-c", "100", path); err == nil || !strings.Contains(stderr, "Operation not permitted") {
				t.Fatalf("head of a stub with nothing resident: %v: %q, want EPERM", err, stderr)
			}
			if n := e.src.bytes.Load(); n != 0 {
				t.Fatalf("head-only made the source serve %d bytes", n)
			}

			// dd (no rule) recalls the first chunk; the background fill of
			// the rest waits at the gate, so the stub stays partial.
			gate := make(chan struct{})
			var once sync.Once
			open := func() { once.Do(func() { close(gate) }) }
			t.Cleanup(open)
			e.src.mu.Lock()
			e.src.gate, e.src.allow = gate, func(off int64) bool { return off == 0 }
			e.src.mu.Unlock()
			sameBytes(t, "dd of the head", mustRun(t, "dd", "if="+path, "bs=64k", "count=1", "status=none"), data[:64<<10])

			sameBytes(t, "head of the resident part", mustRun(t, "head", "-c", "100000", path), data[:100000])
			if _, stderr, err := runAs(t, nil, "tail", "-c", "100", path); err == nil || !strings.Contains(stderr, "Operation not permitted") {
				t.Fatalf("tail of a part that is not resident: %v: %q, want EPERM", err, stderr)
			}
			st := e.it.RuleStats()
			if len(st) != 1 || st[0].Denied < 2 || st[0].Served == 0 {
				t.Fatalf("rule stats %+v, want denials and served accesses", st)
			}
			if n := e.src.bytes.Load(); n != interceptor.DefaultChunkSize {
				t.Fatalf("source served %d bytes, want the first chunk (%d) only", n, interceptor.DefaultChunkSize)
			}

			e.src.mu.Lock()
			e.src.gate, e.src.allow = nil, nil
			e.src.mu.Unlock()
			open()
			e.comp.waitComplete(t, path)
			sameBytes(t, "tail once the file is back", mustRun(t, "tail", "-c", "100", path), data[len(data)-100:])
		})
		// In open-perm reads raise no event: nothing could keep head from
		// reading holes, so its open is refused.
		t.Run(fs+"/open-perm", func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModeOpenPerm, func(c *interceptor.Config) {
				c.Rules = []interceptor.Rule{{Name: "probe", Comm: []string{"head"}, Action: interceptor.ActionHeadOnly}}
			})
			path := filepath.Join(e.mnt, "media.bin")
			data := content(42, 6<<20)
			makeStub(t, e.it, e.src, path, data, 0o644)
			if _, stderr, err := runAs(t, nil, "head", "-c", "100", path); err == nil || !strings.Contains(stderr, "Operation not permitted") {
				t.Fatalf("head of a stub in open-perm: %v: %q, want EPERM at open", err, stderr)
			}
			if n := e.src.bytes.Load(); n != 0 {
				t.Fatalf("head-only made the source serve %d bytes", n)
			}
			sameBytes(t, "cat (no rule)", mustRun(t, "cat", path), data)
		})
	}
}

// TestRecallStorm: cat reading 40 small stubs in one process starts 40
// recalls within a second: the interceptor logs it and publishes one
// recall.storm, which a read-only subscriber of the event stream gets
// (a NATS client over TCP with the reader's credentials). A process that
// recalls a few files raises none; the storm of a program a rule matched
// names the rule.
func TestRecallStorm(t *testing.T) {
	srv := pipelinetest.RunServer(t, pipelinetest.WithTCP())
	creds := srv.Credentials()
	nc, err := nats.Connect(creds.URL, nats.UserInfo(creds.Reader.Name, creds.Reader.Password),
		nats.CustomInboxPrefix(pipeline.ReaderInboxPrefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	msgs := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(events.Subject(srv.Host(), events.KindRecallStorm), msgs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			var mu sync.Mutex
			var storms []interceptor.Storm
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.Emitter = pipeline.NewEmitter(srv.JetStream(), srv.Host(), "interceptor")
				c.StormRecalls, c.StormWindow = 20, 5*time.Second
				// tac is throttled (hardly: 0.6 ms between recalls): its
				// storm names the rule.
				c.Rules = []interceptor.Rule{{Name: "bulk", Comm: []string{"tac"}, Action: interceptor.ActionThrottle, RecallsPerMin: 100000}}
				c.OnStorm = func(s interceptor.Storm) {
					mu.Lock()
					storms = append(storms, s)
					mu.Unlock()
				}
			})
			var paths []string
			var want []byte
			for n := range 40 {
				p := filepath.Join(e.mnt, fmt.Sprintf("f%02d", n))
				d := content(uint64(100+n), 8<<10)
				makeStub(t, e.it, e.src, p, d, 0o644)
				paths = append(paths, p)
				want = append(want, d...)
			}
			sameBytes(t, "cat of 5 stubs", mustRun(t, "cat", paths[:5]...), want[:5*8<<10])
			select {
			case m := <-msgs:
				t.Fatalf("a storm for 5 recalls: %s", m.Data)
			default:
			}
			sameBytes(t, "cat of 35 stubs", mustRun(t, "cat", paths[5:]...), want[5*8<<10:])

			var m *nats.Msg
			select {
			case m = <-msgs:
			case <-time.After(30 * time.Second):
				t.Fatal("no recall.storm published")
			}
			env, ev, err := events.Decode(m.Data)
			if err != nil {
				t.Fatal(err)
			}
			s, ok := ev.(*events.RecallStorm)
			if !ok || env.Type != events.KindRecallStorm.Type() {
				t.Fatalf("event %s %T", env.Type, ev)
			}
			if s.Process != "cat" || s.Exe == "" || s.PID <= 0 || s.Recalls != 20 || s.WithinNS > s.WindowNS ||
				s.Action != events.RuleRecall || s.Total < 20 || !strings.HasPrefix(s.Path, e.mnt+"/f") {
				t.Fatalf("recall.storm %+v", s)
			}
			mu.Lock()
			got := len(storms)
			mu.Unlock()
			if got != 1 {
				t.Fatalf("%d storms reported, want 1 (one per process)", got)
			}
			select {
			case m := <-msgs:
				t.Fatalf("a second recall.storm for the same process: %s", m.Data)
			case <-time.After(200 * time.Millisecond):
			}

			var more []string
			for n := range 25 {
				p := filepath.Join(e.mnt, fmt.Sprintf("g%02d", n))
				makeStub(t, e.it, e.src, p, content(uint64(300+n), 8<<10), 0o644)
				more = append(more, p)
			}
			mustRun(t, "tac", more...)
			select {
			case m = <-msgs:
			case <-time.After(30 * time.Second):
				t.Fatal("no recall.storm for tac")
			}
			if _, ev, err = events.Decode(m.Data); err != nil {
				t.Fatal(err)
			}
			if s := ev.(*events.RecallStorm); s.Process != "tac" || s.Rule != "bulk" || s.Action != events.RuleThrottle {
				t.Fatalf("recall.storm of a throttled program %+v", s)
			}
		})
	}
}

// TestRuleConfigErrors: each bad rule is refused with its key and why.
func TestRuleConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		rule interceptor.Rule
		want string
	}{
		{interceptor.Rule{Action: interceptor.ActionDeny}, "rule[0].exe: a rule names at least one of exe, comm, uid and cgroup"},
		{interceptor.Rule{Exe: []string{"tar"}, Action: "block"}, `rule[0].action: "block": want "recall", "deny", "throttle" or "head-only"`},
		{interceptor.Rule{Exe: []string{"bin/tar"}, Action: interceptor.ActionDeny}, `rule[0].exe[0]: "bin/tar": want an absolute path or a name without "/"`},
		{interceptor.Rule{Exe: []string{"/usr/bin/[tar"}}, "rule[0].exe[0]"},
		{interceptor.Rule{Comm: []string{"a-very-long-process-name"}}, "longer than 15 bytes"},
		{interceptor.Rule{Comm: []string{"/usr/bin/tar"}}, "rule[0].comm[0]"},
		{interceptor.Rule{UID: []int64{-1}}, "rule[0].uid[0]: -1: want a uid from 0 to 4294967294"},
		{interceptor.Rule{Cgroup: []string{"system.slice"}}, "rule[0].cgroup[0]: \"system.slice\": want a cgroup v2 path from the root"},
		{interceptor.Rule{Exe: []string{"tar"}, Action: interceptor.ActionDeny, Errno: "EACCES"}, "the kernel refuses EACCES in a fanotify deny; EPERM is the closest"},
		{interceptor.Rule{Exe: []string{"tar"}, Action: interceptor.ActionDeny, Errno: "ENOENT"}, "want EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC or EDQUOT"},
		{interceptor.Rule{Exe: []string{"tar"}, Errno: "EPERM"}, "rule[0].errno: \"EPERM\": only for action deny or head-only"},
		{interceptor.Rule{Exe: []string{"tar"}, Action: interceptor.ActionThrottle}, "a throttle rule needs bytes_per_sec or recalls_per_min"},
		{interceptor.Rule{Exe: []string{"tar"}, Action: interceptor.ActionThrottle, BytesPerSec: -5}, "rule[0].bytes_per_sec: -5: want a positive rate"},
		{interceptor.Rule{Exe: []string{"tar"}, Action: interceptor.ActionDeny, RecallsPerMin: 5}, "rule[0].recalls_per_min: only for action throttle"},
	} {
		cfg := interceptor.NewConfig()
		cfg.Rules = []interceptor.Rule{tc.rule}
		err := cfg.Validate()
		var ce *pipeline.ConfigError
		if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rule %+v: %v, want a ConfigError containing %q", tc.rule, err, tc.want)
		}
	}
	cfg := interceptor.NewConfig()
	cfg.Rules = []interceptor.Rule{{Name: "a", Exe: []string{"tar"}}, {Name: "a", Comm: []string{"rsync"}}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "rule[1].name: \"a\": used by another rule") {
		t.Errorf("two rules named a: %v", err)
	}
	cfg = interceptor.NewConfig()
	cfg.Rules = []interceptor.Rule{{Exe: []string{"/opt/backup/**", "tar"}, Comm: []string{"ta?"}, UID: []int64{34}, Cgroup: []string{"/system.slice/backup.service"},
		Action: interceptor.ActionThrottle, BytesPerSec: 1 << 20, RecallsPerMin: 60}}
	if err := cfg.Validate(); err != nil {
		t.Errorf("a good rule: %v", err)
	}
}

// TestRuleThrottleRecalls: a throttle rule of 120 recalls a minute spaces
// the recalls cat starts by half a second, and the bytes are right.
func TestRuleThrottleRecalls(t *testing.T) {
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.Rules = []interceptor.Rule{{Name: "paced", Comm: []string{"cat"}, Action: interceptor.ActionThrottle, RecallsPerMin: 120}}
			})
			var paths []string
			var want []byte
			for n := range 5 {
				p := filepath.Join(e.mnt, fmt.Sprintf("f%d", n))
				d := content(uint64(200+n), 64<<10)
				makeStub(t, e.it, e.src, p, d, 0o644)
				paths, want = append(paths, p), append(want, d...)
			}
			start := time.Now()
			sameBytes(t, "cat of 5 stubs", mustRun(t, "cat", paths...), want)
			took := time.Since(start)
			if min := 4 * 500 * time.Millisecond; took < min-50*time.Millisecond {
				t.Fatalf("5 recalls at 120 a minute took %v, want at least %v", took, min)
			}
			// 4 waits, unless a recall took longer than the spacing.
			if st := e.it.RuleStats(); len(st) != 1 || st[0].Throttled == 0 || st[0].Throttled > 4 || st[0].Waited == 0 {
				t.Fatalf("rule stats %+v, want up to 4 recalls throttled", st)
			}
		})
	}
}

// cgroup2Root returns where the cgroup v2 hierarchy is mounted.
func cgroup2Root(t *testing.T) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup2 ") {
			return f[4]
		}
	}
	stratatest.Skip(t, "no cgroup v2 hierarchy mounted")
	return ""
}

// TestRuleCgroup: a deny rule for a cgroup (say, a backup service's)
// stops programs in it and in the cgroups below it, and no other. The
// programs are started straight into a new cgroup (clone3
// CLONE_INTO_CGROUP through SysProcAttr.CgroupFD).
func TestRuleCgroup(t *testing.T) {
	stratatest.NeedRoot(t)
	root := cgroup2Root(t)
	name := fmt.Sprintf("strata-test-%d", os.Getpid())
	dir := filepath.Join(root, name)
	child := filepath.Join(dir, "job")
	for _, d := range []string{dir, child} {
		if err := os.Mkdir(d, 0o755); err != nil {
			stratatest.Skip(t, "make a cgroup: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{child, dir} {
			if err := os.Remove(d); err != nil {
				t.Errorf("remove cgroup %s: %v", d, err)
			}
		}
	})
	// The daemon sees cgroups relative to its own cgroup namespace root:
	// here the hierarchy's root, as /proc/self/cgroup shows it.
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	base := "/"
	for line := range strings.SplitSeq(string(self), "\n") {
		if v, ok := strings.CutPrefix(line, "0::"); ok {
			base = v
		}
	}
	if base != "/" {
		stratatest.Skip(t, "the test runs in cgroup %s, not at the root of the hierarchy", base)
	}
	inCgroup := func(t *testing.T, cg string, args ...string) ([]byte, string, error) {
		f, err := os.Open(cg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
		err = cmd.Run()
		return stdout.Bytes(), stderr.String(), err
	}
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, interceptor.ModePreAccess, func(c *interceptor.Config) {
				c.Rules = []interceptor.Rule{{Name: "backup-service", Cgroup: []string{"/" + name}, Action: interceptor.ActionDeny}}
			})
			p := filepath.Join(e.mnt, "f")
			data := content(51, 5<<20)
			makeStub(t, e.it, e.src, p, data, 0o644)
			for _, cg := range []string{dir, child} {
				if _, stderr, err := inCgroup(t, cg, "cat", p); err == nil || !strings.Contains(stderr, "Operation not permitted") {
					t.Fatalf("cat in cgroup %s: %v: %q, want EPERM", cg, err, stderr)
				}
			}
			if n := e.src.bytes.Load(); n != 0 {
				t.Fatalf("denied reads made the source serve %d bytes", n)
			}
			out, stderr, err := inCgroup(t, root, "cat", p)
			if err != nil {
				t.Fatalf("cat in the root cgroup: %v: %s", err, stderr)
			}
			sameBytes(t, "cat in the root cgroup", out, data)
			e.comp.waitComplete(t, p)
		})
	}
}
