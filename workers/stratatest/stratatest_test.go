package stratatest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLoopMount(t *testing.T) {
	for _, fs := range FSTypes {
		t.Run(fs, func(t *testing.T) {
			mnt := LoopMount(t, fs, 300<<20)
			p := filepath.Join(mnt, "f")
			if err := os.WriteFile(p, []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil || string(b) != "hello" {
				t.Fatalf("read back %q, %v", b, err)
			}
		})
	}
}
