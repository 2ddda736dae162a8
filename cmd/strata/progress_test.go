package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/pipeline"
)

// openPTY opens a pseudo-terminal and returns its master and slave ends,
// closed in t.Cleanup.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	unlock := 0
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, m.Fd(), unix.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		t.Fatalf("unlock pty: %v", e)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// TestExportProgress: strata export shows its progress on a terminal —
// the rows read, then each file written — also when the running daemon
// exports (it publishes its progress to the CLI's inbox); off a terminal
// it draws no bar.
func TestExportProgress(t *testing.T) {
	data := t.TempDir()
	d, _ := testDaemon(t, Config{DataDir: data})
	const n = 20_000
	publishAll(t, d.js, "otherhost", mixedEvents(n, 1), 0)
	last, err := pipeline.LastSeq(context.Background(), d.js)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.cat.WaitSeq(ctx, last); err != nil {
		t.Fatal(err)
	}

	master, slave := openPTY(t)
	var tty bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&tty, master); close(copied) }()
	var out bytes.Buffer
	code := exitCode(run(context.Background(), []string{"export", "--parquet", t.TempDir(), "--data", data}, &out, slave), slave)
	slave.Close()
	<-copied // the master reads EIO once the slave is closed
	if code != 0 {
		t.Fatalf("export: exit %d\n%s\n%s", code, out.String(), tty.String())
	}
	drawn := tty.String()
	for _, want := range []string{"\rexport ", " rows", "reading the catalog", "writing copies.parquet"} {
		if !strings.Contains(drawn, want) {
			t.Errorf("export on a terminal: no %q in what it drew:\n%q", want, drawn)
		}
	}

	// Off a terminal: no bar, no escape codes (a plain line would come
	// every 5 s; this export is quicker).
	o, errs, code := cli(t, "export", "--parquet", t.TempDir(), "--data", data)
	if code != 0 || strings.ContainsAny(errs, "\r\x1b") || !strings.Contains(o, "exported the catalog") {
		t.Errorf("export off a terminal: exit %d, stderr %q, stdout %q", code, errs, o)
	}
}
