// Command helper is built by the interceptor's tests: "helper mmap FILE"
// maps FILE whole and prints the SHA-256 of the mapping; "helper hello"
// prints a greeting (the test execs a stubbed copy of this binary);
// "helper clone SRC OFF DST" clones SRC from byte OFF to its end into DST
// at OFF (FICLONERANGE with length 0), exit status 3 if the filesystem
// cannot clone.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "hello" {
		fmt.Println("hello from a stub")
		return
	}
	if len(os.Args) == 5 && os.Args[1] == "clone" {
		clone(os.Args[2], os.Args[3], os.Args[4])
		return
	}
	if len(os.Args) != 3 || os.Args[1] != "mmap" {
		fmt.Fprintln(os.Stderr, "usage: helper hello | helper mmap FILE | helper clone SRC OFF DST")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fi, err := f.Stat()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mmap:", err)
		os.Exit(1)
	}
	sum := sha256.Sum256(m)
	fmt.Println(hex.EncodeToString(sum[:]))
}

func clone(src, offset, dst string) {
	off, err := strconv.ParseUint(offset, 10, 64)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	in, err := os.Open(src)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := os.Create(dst)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	err = unix.IoctlFileCloneRange(int(out.Fd()), &unix.FileCloneRange{Src_fd: int64(in.Fd()), Src_offset: off, Dest_offset: off})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) {
		fmt.Fprintln(os.Stderr, "clone:", err)
		os.Exit(3)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clone:", err)
		os.Exit(1)
	}
}
