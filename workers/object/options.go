package object

import (
	"cmp"
	"runtime"

	"github.com/strata-hsm/strata/pipeline"
)

// Limits and defaults of Options.
const (
	DefaultFrameSize = 4 << 20   // 4 MiB
	MinFrameSize     = 1 << 10   // 1 KiB
	MaxFrameSize     = 256 << 20 // 256 MiB: seek table fields are u32
	DefaultLevel     = 3         // zstd's default level
	MinLevel         = 1
	MaxLevel         = 22
)

// Options tune Pack. The zero value means defaults.
type Options struct {
	// FrameSize is the uncompressed size of each frame (default 4 MiB). A
	// recall decompresses whole frames, so it is also the read granularity.
	FrameSize int `json:"frame_size" toml:"frame_size"`
	// Level is the zstd level, 1..22 (default 3). klauspost/compress maps it
	// to its nearest speed: 1 fastest, 2-5 default, 6-9 better, 10+ best.
	Level int `json:"level" toml:"level"`
	// Concurrency is the number of frames compressed at once (default
	// GOMAXPROCS). At most Concurrency+2 frames are in memory.
	Concurrency int `json:"concurrency" toml:"concurrency"`
}

// EnsureDefaults fills zero fields with their defaults.
func (o *Options) EnsureDefaults() {
	o.FrameSize = cmp.Or(o.FrameSize, DefaultFrameSize)
	o.Level = cmp.Or(o.Level, DefaultLevel)
	o.Concurrency = cmp.Or(o.Concurrency, runtime.GOMAXPROCS(0))
}

// Validate checks o after EnsureDefaults.
func (o Options) Validate() error {
	switch {
	case o.FrameSize < MinFrameSize || o.FrameSize > MaxFrameSize:
		return pipeline.BadConfig("frame_size", o.FrameSize, "must be in [%d, %d]", MinFrameSize, MaxFrameSize)
	case o.Level < MinLevel || o.Level > MaxLevel:
		return pipeline.BadConfig("level", o.Level, "must be in [%d, %d]", MinLevel, MaxLevel)
	case o.Concurrency < 1 || o.Concurrency > 1024:
		return pipeline.BadConfig("concurrency", o.Concurrency, "must be in [1, 1024]")
	}
	return nil
}
