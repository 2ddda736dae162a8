package scanner

import (
	"errors"
	"strings"
	"testing"

	"github.com/strata-hsm/strata/workers/stratatest"
)

// TestClaim: a hot tree is one daemon's; a second claim (another data
// directory) is refused, naming the first; once released it can be taken.
func TestClaim(t *testing.T) {
	stratatest.NeedRoot(t) // trusted.* xattrs
	a, b := t.TempDir(), t.TempDir()
	release, err := Claim([]string{a, b}, "/var/lib/first")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Claim([]string{b}, "/var/lib/second")
	if !errors.Is(err, ErrClaimed) || !strings.Contains(err.Error(), b) {
		t.Fatalf("second claim of %s: %v; want ErrClaimed naming the tree", b, err)
	}
	if !strings.Contains(err.Error(), "/var/lib/first") {
		t.Fatalf("refusal does not name the first daemon: %v", err)
	}
	release()
	release2, err := Claim([]string{b}, "/var/lib/second")
	if err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	release2()
	if _, err := Claim([]string{"/does/not/exist"}, "/d"); err == nil {
		t.Fatal("claim of a missing tree: no error")
	}
}
