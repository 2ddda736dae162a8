// Command helper is built by the interceptor's tests: "helper mmap FILE"
// maps FILE whole and prints the SHA-256 of the mapping; "helper hello"
// prints a greeting (the test execs a stubbed copy of this binary).
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"syscall"
)

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "hello" {
		fmt.Println("hello from a stub")
		return
	}
	if len(os.Args) != 3 || os.Args[1] != "mmap" {
		fmt.Fprintln(os.Stderr, "usage: helper hello | helper mmap FILE")
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
