//go:build linux && kernelguard_live

package kernelguard

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func makeResidentQuiet(b testing.TB, path string, size int) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for n := 0; n < size; n += len(buf) {
		f.Write(buf[:min(len(buf), size-n)])
	}
	f.Sync()
	f.Close()
}

func openReadAll(b testing.TB, dir string, n int) {
	buf := make([]byte, 4096)
	for i := range n {
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprint(i)), unix.O_RDONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		unix.Read(fd, buf)
		unix.Close(fd)
	}
}

func preadRandom(b testing.TB, path string, n int) {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	r := rand.New(rand.NewPCG(1, 2))
	for range n {
		unix.Pread(fd, buf, int64(r.IntN(1<<30/4096))*4096)
	}
}

func seqRead(b testing.TB, path string) {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 1<<20)
	for {
		n, err := unix.Read(fd, buf)
		if n <= 0 || err != nil {
			return
		}
	}
}

func openClose(b testing.TB, path string, n int) {
	for range n {
		fd, err := unix.Open(path, unix.O_RDONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		unix.Close(fd)
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
