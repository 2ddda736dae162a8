package rclone_test

import (
	"flag"
	"os"
	"testing"
)

// TestMain raises the default -parallel: these tests spend their time
// waiting for rclone child processes and servers, not on the CPU, so
// running more of them at once than GOMAXPROCS (2 in CI) shortens the
// package from about a minute to well under. An explicit -parallel wins.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if !set {
		_ = flag.Set("test.parallel", "6")
	}
	os.Exit(m.Run())
}
