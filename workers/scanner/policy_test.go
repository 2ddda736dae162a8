package scanner

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPolicyValidate(t *testing.T) {
	good := func() Policy { return NewPolicy("/srv/a", "/srv/b") }
	if p := good(); p.Validate() != nil {
		t.Fatalf("default policy invalid: %v", p.Validate())
	}
	cases := []struct {
		field string
		mod   func(*Policy)
	}{
		{"roots", func(p *Policy) { p.Roots = nil }},
		{"roots[0]", func(p *Policy) { p.Roots[0] = "rel/path" }},
		{"roots[1]", func(p *Policy) { p.Roots[1] = "/srv/b/../b/" }},
		{"roots[1]", func(p *Policy) { p.Roots[1] = "/srv/a/sub" }},
		{"data_dir", func(p *Policy) { p.DataDir = "var/lib/strata" }},
		{"min_size", func(p *Policy) { p.MinSize = -1 }},
		{"min_atime_age", func(p *Policy) { p.MinAtimeAge = -time.Second }},
		{"min_mtime_age", func(p *Policy) { p.MinMtimeAge = -time.Second }},
		{"age_match", func(p *Policy) { p.AgeMatch = "and" }},
		{"include[0]", func(p *Policy) { p.Include = []string{"[a-"} }},
		{"exclude[1]", func(p *Policy) { p.Exclude = []string{"*.log", ""} }},
		{"pinned[0]", func(p *Policy) { p.PinnedPaths = []string{"x"} }},
		{"high_watermark", func(p *Policy) { p.HighWatermark = 120; p.LowWatermark = 50 }},
		{"low_watermark", func(p *Policy) { p.HighWatermark = 80 }},
		{"low_watermark", func(p *Policy) { p.HighWatermark = 80; p.LowWatermark = 90 }},
		{"workers", func(p *Policy) { p.Workers = -2 }},
	}
	for _, c := range cases {
		t.Run(c.field, func(t *testing.T) {
			p := good()
			c.mod(&p)
			err := p.Validate()
			var ve *ValidationError
			if !errors.As(err, &ve) || ve.Field != c.field || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("want an error naming %s, got %v", c.field, err)
			}
		})
	}
}

func TestAgeMatch(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	old := now.Add(-48 * time.Hour).UnixNano()
	young := now.Add(-time.Hour).UnixNano()
	day := 24 * time.Hour
	cases := []struct {
		atimeAge, mtimeAge time.Duration
		match              string
		atime, mtime       int64
		want               bool
	}{
		{0, 0, AgeAll, young, young, true}, // no age criterion
		{day, day, AgeAll, old, old, true},
		{day, day, AgeAll, young, old, false},
		{day, day, AgeAll, old, young, false},
		{day, day, AgeAny, young, old, true},
		{day, day, AgeAny, old, young, true},
		{day, day, AgeAny, young, young, false},
		{day, 0, AgeAll, old, young, true}, // only atime counts
		{day, 0, AgeAny, young, old, false},
		{0, day, AgeAny, young, old, true},
	}
	for i, c := range cases {
		p := Policy{MinAtimeAge: c.atimeAge, MinMtimeAge: c.mtimeAge, AgeMatch: c.match}
		if got := p.ageOK(now, c.atime, c.mtime); got != c.want {
			t.Errorf("case %d %+v: got %v", i, c, got)
		}
	}
}
