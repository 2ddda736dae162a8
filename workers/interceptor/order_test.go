//go:build linux

package interceptor_test

import (
	"slices"
	"testing"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/interceptor"
)

// TestOrderRecalls: a bulk recall reads tier by tier (cheapest first),
// each cartridge in one pass (volume, tape file, block, offset), other
// tiers by object, stubs no tier can serve last; a path listed twice is
// read once.
func TestOrderRecalls(t *testing.T) {
	tape := func(vol string, file, block, off int64) *events.TapePosition {
		return &events.TapePosition{Volume: vol, TapeFile: file, Block: block, Offset: off}
	}
	in := []interceptor.RecallFile{
		{Path: "/h/none", ObjectID: "aa", NoCopy: "no good copy"},
		{Path: "/h/t2-late", ObjectID: "01", Tier: "lto", Cost: 30, Tape: tape("T2", 1, 0, 0)},
		{Path: "/h/dir-b", ObjectID: "bb", Tier: "hdd", Cost: 10},
		{Path: "/h/t1-f3", ObjectID: "02", Tier: "lto", Cost: 30, Tape: tape("T1", 3, 10, 0)},
		{Path: "/h/t1-f1-b9", ObjectID: "03", Tier: "lto", Cost: 30, Tape: tape("T1", 1, 9, 0)},
		{Path: "/h/t1-f1-b2-o5", ObjectID: "04", Tier: "lto", Cost: 30, Tape: tape("T1", 1, 2, 5)},
		{Path: "/h/t1-f1-b2-o1", ObjectID: "05", Tier: "lto", Cost: 30, Tape: tape("T1", 1, 2, 1)},
		{Path: "/h/dir-a", ObjectID: "aa", Tier: "hdd", Cost: 10},
		{Path: "/h/dir-a2", ObjectID: "aa", Tier: "hdd", Cost: 10},
		{Path: "/h/dir-b", ObjectID: "bb", Tier: "hdd", Cost: 10},
		{Path: "/h/s3", ObjectID: "00", Tier: "s3", Cost: 20},
	}
	var got []string
	for _, f := range interceptor.OrderRecalls(in) {
		got = append(got, f.Path)
	}
	want := []string{"/h/dir-a", "/h/dir-a2", "/h/dir-b", "/h/s3", "/h/t1-f1-b2-o1", "/h/t1-f1-b2-o5", "/h/t1-f1-b9", "/h/t1-f3", "/h/t2-late", "/h/none"}
	if !slices.Equal(got, want) {
		t.Fatalf("order %q\nwant %q", got, want)
	}
}
