//go:build linux

package modwatch_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/workers/modwatch"
	"github.com/strata-hsm/strata/workers/stratatest"
	"github.com/strata-hsm/strata/workers/stub"
)

// arrival is a file.modified as a subscriber saw it.
type arrival struct {
	at time.Time
	id string // envelope id: the log records each id once
	ev *events.FileModified
}

type env struct {
	t   testing.TB
	hot string
	srv *pipeline.Server
	cat *catalog.Catalog
	em  *pipeline.Emitter
	w   *modwatch.Watcher
	n   int

	mu       sync.Mutex
	modified map[string][]arrival // by file id
}

const host = "test"

func newEnv(t testing.TB, fs string, size int64) *env {
	stratatest.NeedRoot(t)
	e := &env{t: t, hot: filepath.Join(stratatest.LoopMount(t, fs, size), "hot"), modified: map[string][]arrival{}}
	if err := os.MkdirAll(e.hot, 0o755); err != nil {
		t.Fatal(err)
	}
	e.srv = pipelinetest.RunServer(t, pipelinetest.WithHost(host))
	var err error
	if e.cat, err = catalog.Open(t.TempDir(), catalog.Options{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.cat.Follow(ctx, e.srv.JetStream(), slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done; e.cat.Close() })
	e.em = pipeline.NewEmitter(e.srv.JetStream(), host, "test")

	// A subscriber, as any NATS client is: when does each file.modified
	// arrive? (A plain subscriber sees every publish, also one the stream
	// drops as a duplicate of an id it holds: count ids.)
	sub, err := e.srv.Conn().Subscribe(events.Subject(host, events.KindFileModified), func(m *nats.Msg) {
		env, ev, err := events.Decode(m.Data)
		if err != nil {
			t.Errorf("file.modified that does not decode: %v", err)
			return
		}
		fm := ev.(*events.FileModified)
		e.mu.Lock()
		e.modified[fm.FileID] = append(e.modified[fm.FileID], arrival{time.Now(), env.ID, fm})
		e.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return e
}

// start runs the watcher until the test ends.
func (e *env) start() { e.t.Cleanup(e.startStoppable()) }

// startStoppable runs the watcher until the returned func is called.
func (e *env) startStoppable() (stop func()) {
	w, err := modwatch.Open(modwatch.Config{Host: host, JS: e.srv.JetStream(), Emitter: pipeline.NewEmitter(e.srv.JetStream(), host, "modwatch"),
		Catalog: e.cat, Roots: []string{e.hot}, Logger: slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		e.t.Fatal(err)
	}
	e.w = w
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stopped := false
	return func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

// archived makes a file that Strata archived and recalled (xattrs say
// archived, size and mtime match) and records that in the log: released,
// then recall.completed. It returns its path and file id.
func (e *env) archived(name string, size int) (string, string) {
	e.t.Helper()
	e.n++
	path := filepath.Join(e.hot, name)
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		e.t.Fatal(err)
	}
	old := time.Date(2022, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		e.t.Fatal(err)
	}
	fid, oid := fmt.Sprintf("%032x", 0xf00+e.n), fmt.Sprintf("%064x", 0xa00+e.n)
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		e.t.Fatal(err)
	}
	if err := stub.Write(fd, stub.Info{FileID: fid, ObjectID: oid, State: stub.Archived, Size: st.Size, MtimeNS: st.Mtim.Nano()}); err != nil {
		e.t.Fatal(err)
	}
	unix.Close(fd)
	fst := stub.FileStat(&st, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.em.Emit(ctx, &events.FileReleased{FileID: fid, Path: path, ObjectID: oid, Stat: fst, Copies: 1}, fid, "released"); err != nil {
		e.t.Fatal(err)
	}
	seq, err := e.em.Emit(ctx, &events.RecallCompleted{FileID: fid, Path: path, ObjectID: oid, Bytes: st.Size, SourceTier: "hdd"}, fid, "completed")
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.cat.WaitSeq(ctx, seq); err != nil {
		e.t.Fatal(err)
	}
	if e.w != nil { // a running watcher has applied both events
		waitFor(e.t, 10*time.Second, func() error {
			if got := e.w.Stats().Seq; got < seq {
				return fmt.Errorf("watcher at seq %d, want %d", got, seq)
			}
			return nil
		})
	}
	return path, fid
}

// waitWatched waits until the watcher has marked n files in all.
func (e *env) waitWatched(n int) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, func() error {
		if got := e.w.Stats().Marked; got < uint64(n) {
			return fmt.Errorf("%d files marked, want %d", got, n)
		}
		return nil
	})
}

// sh runs a shell command line, as a user would.
func sh(t *testing.T, line string) {
	t.Helper()
	if out, err := exec.Command("sh", "-c", line).CombinedOutput(); err != nil {
		t.Fatalf("sh -c %q: %v\n%s", line, err, out)
	}
}

// waitModified waits (at most limit after since) for the file.modified of
// fid and returns it with its delay.
func (e *env) waitModified(fid string, since time.Time, limit time.Duration) (*events.FileModified, time.Duration) {
	e.t.Helper()
	var got arrival
	waitFor(e.t, limit, func() error {
		e.mu.Lock()
		defer e.mu.Unlock()
		if a := e.modified[fid]; len(a) > 0 {
			got = a[0]
			return nil
		}
		return fmt.Errorf("no file.modified for %s after %v", fid, time.Since(since))
	})
	return got.ev, got.at.Sub(since)
}

// modifiedCount is how many file.modified of fid the log records (distinct
// ids).
func (e *env) modifiedCount(fid string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := map[string]bool{}
	for _, a := range e.modified[fid] {
		ids[a.id] = true
	}
	return len(ids)
}

func waitFor(t testing.TB, total time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestModifiedAtTheWrite: a write into a clean recalled file is published
// as file.modified when it happens — within a second, with no scan — by
// real programs (echo >>, dd conv=notrunc, truncate, fallocate
// --punch-hole, a write through a shared mapping, a write whose mtime is
// put back), on ext4 and XFS; the catalog marks the file dirty; the
// mark goes after the first write (later writes raise nothing); files
// already archived when the watcher starts are watched from the catalog;
// a file written while no watcher ran is reported when it starts;
// a program that opens a file for writing and writes nothing, the daemon's
// own writes, and writes into files that are not archived are not
// modifications.
func TestModifiedAtTheWrite(t *testing.T) {
	stratatest.NeedTool(t, "dd")
	stratatest.NeedTool(t, "truncate")
	stratatest.NeedTool(t, "fallocate")
	py := stratatest.NeedTool(t, "python3")
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			e := newEnv(t, fs, 320<<20)
			// Archived before the watcher starts: found in the catalog.
			early, earlyID := e.archived("early.bin", 64<<10)
			// Archived, then written while no watcher ran (the daemon was
			// stopped): reported when the watcher starts, not at a scan.
			down, downID := e.archived("down.bin", 64<<10)
			sh(t, `echo while-down >> "`+down+`"`)
			t0 := time.Now()
			e.start()
			e.waitWatched(2)
			if ev, delay := e.waitModified(downID, t0, 5*time.Second); ev.Path != down || ev.Stat.Size != 64<<10+11 {
				t.Errorf("file.modified of a file written while no watcher ran: %+v", ev)
			} else {
				t.Logf("written while no watcher ran: file.modified %v after the watcher started", delay)
			}

			// The write of the mmap case comes at the end of a Python
			// program (its start takes most of its run): its delay is
			// counted from the program's exit, the others' from their
			// start.
			cases := []struct {
				name, line string
				size       int64 // size after the write
				fromExit   bool
			}{
				{"echo", `echo appended >> "$F"`, 64<<10 + 9, false},
				{"dd", `printf 'XXXX' | dd of="$F" bs=1 seek=100 conv=notrunc status=none`, 64 << 10, false},
				{"truncate", `truncate -s 1000 "$F"`, 1000, false},
				{"punch", `fallocate --punch-hole --offset 0 --length 4096 "$F"`, 64 << 10, false},
				// A write that puts the archived mtime back (as touch -r or
				// an in-place rsync -t do): size and mtime say unchanged,
				// which is all a scan could go by.
				{"mtime-put-back", `printf 'Z' | dd of="$F" bs=1 seek=7 conv=notrunc status=none; touch -d @1641092645.000000006 "$F"`, 64 << 10, false},
				{"mmap", py + ` -c 'import mmap,os,sys
f=os.open(sys.argv[1],os.O_RDWR); m=mmap.mmap(f,0); m[5:9]=b"MMAP"; m.flush(); m.close(); os.close(f)' "$F"`, 64 << 10, true},
			}
			marked := 2
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					path, fid := e.archived(c.name+".bin", 64<<10)
					marked++
					e.waitWatched(marked)
					t0 := time.Now()
					sh(t, "F="+path+"; "+c.line)
					if info, err := stub.ReadPath(path); c.name == "mtime-put-back" && (err != nil || !info.Unchanged(sizeMtime(t, path))) {
						t.Fatalf("%s: size and mtime are not the archived ones (%+v, %v): the case tests nothing", c.name, info, err)
					}
					if c.fromExit {
						t0 = time.Now()
					}
					ev, delay := e.waitModified(fid, t0, 5*time.Second)
					t.Logf("%s: file.modified %v after the write", c.name, delay)
					if delay > time.Second {
						t.Errorf("file.modified came %v after the write, want within 1s", delay)
					}
					if ev.Path != path || ev.Stat.Size != c.size {
						t.Errorf("file.modified %+v: want path %s, size %d", ev, path, c.size)
					}
					waitFor(t, 5*time.Second, func() error {
						f, err := e.cat.File(fid)
						if err == nil && f.State != catalog.StateDirty {
							err = fmt.Errorf("catalog state %s, want dirty", f.State)
						}
						return err
					})
				})
			}

			t.Run("catalog", func(t *testing.T) {
				t0 := time.Now()
				sh(t, `echo more >> "`+early+`"`)
				if _, delay := e.waitModified(earlyID, t0, 5*time.Second); delay > time.Second {
					t.Errorf("file.modified of a file watched from the catalog came %v after the write", delay)
				}
			})

			t.Run("not-modifications", func(t *testing.T) {
				quiet, quietID := e.archived("quiet.bin", 4096)
				own, ownID := e.archived("own.bin", 4096)
				marked += 2
				e.waitWatched(marked)
				before := e.w.Stats().Events
				// Ordinary hot files carry no mark: a thousand writes raise
				// nothing.
				sh(t, `for i in $(seq 1000); do echo $i >> "`+filepath.Join(e.hot, "plain.txt")+`"; done`)
				// Opened for writing, closed, nothing written.
				sh(t, `exec 3<> "`+quiet+`"; exec 3>&-`)
				// The daemon's own write (this process): a fill, say.
				f, err := os.OpenFile(own, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt([]byte("fill"), 0); err != nil {
					t.Fatal(err)
				}
				f.Close()
				// A modification after them: when it is reported, the
				// events before it were handled.
				after, afterID := e.archived("after.bin", 4096)
				marked++
				e.waitWatched(marked)
				t0 := time.Now()
				sh(t, `echo x >> "`+after+`"`)
				e.waitModified(afterID, t0, 5*time.Second)
				if n := e.modifiedCount(quietID); n != 0 {
					t.Errorf("%d file.modified for a file opened for writing and closed unwritten", n)
				}
				if n := e.modifiedCount(ownID); n != 0 {
					t.Errorf("%d file.modified for a write of the daemon itself", n)
				}
				// quiet's close, own's write and close, after's write and close.
				if got := e.w.Stats().Events - before; got > 6 {
					t.Errorf("%d notifications for 1000 writes of a plain file and 3 of watched ones: plain files are on the hooked path", got)
				}
			})

			t.Run("once", func(t *testing.T) {
				path, fid := e.archived("once.bin", 4096)
				marked++
				e.waitWatched(marked)
				t0 := time.Now()
				sh(t, `echo 1 >> "`+path+`"`)
				e.waitModified(fid, t0, 5*time.Second)
				before := e.w.Stats().Events
				sh(t, `for i in $(seq 200); do echo $i >> "`+path+`"; done`)
				// Any event of those writes would come before this one's.
				next, nextID := e.archived("next.bin", 4096)
				marked++
				e.waitWatched(marked)
				t1 := time.Now()
				sh(t, `echo 1 >> "`+next+`"`)
				e.waitModified(nextID, t1, 5*time.Second)
				if got := e.w.Stats().Events - before; got > 3 {
					t.Errorf("%d notifications after the file was reported: its mark should be gone", got)
				}
				if n := e.modifiedCount(fid); n != 1 {
					t.Errorf("%d file.modified for one dirty file, want 1", n)
				}
				e.mu.Lock()
				published := len(e.modified[fid])
				e.mu.Unlock()
				if published != 1 {
					t.Errorf("file.modified of one write published %d times", published)
				}
			})
		})
	}
}

// sizeMtime returns the size and mtime of path.
func sizeMtime(t *testing.T, path string) (int64, int64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Size, st.Mtim.Nano()
}
