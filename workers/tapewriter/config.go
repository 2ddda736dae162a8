package tapewriter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/failpoint"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// Changer puts volumes in the writer's drive: a tape library, or a person.
type Changer interface {
	// Mount loads the cartridge with this barcode and returns the drive
	// holding it. The writer checks the label itself.
	Mount(ctx context.Context, volume string) (tape.Drive, error)
	// Dismount unloads it (the writer has written its last filemark).
	Dismount(ctx context.Context, volume string) error
}

// Event kinds.
const (
	EventMounted        = "mounted"
	EventFull           = "full"            // early warning reached or no room: the writer moved on
	EventWriteProtected = "write_protected" // never written
	EventLabelMismatch  = "label_mismatch"  // never written
	EventError          = "error"           // mount, label or write error: the writer moved on
	EventContinued      = "continued"       // a bundle goes on on the next volume
)

// VolumeEvent reports what happened to a volume.
type VolumeEvent struct {
	Volume string
	Kind   string
	Err    error
}

// Config configures a Writer.
type Config struct {
	Pool string
	// Volumes are the barcodes the writer may write, in order; each must
	// carry a label with this volume id and Pool (from the catalog).
	Volumes []string
	Changer Changer
	// BlockSize of new bundles must equal the volume's label; 0 takes it
	// from the label.
	BundleSize int64         // close a bundle at this many bytes (default 16 GiB)
	BundleAge  time.Duration // or this old (default 10 min)
	// FlushEvery: a flushing filemark after this many bundles (default
	// 1); the others end with a non-flushing one. Flush forces one.
	FlushEvery int
	// RingSize is the RAM ring between the bundle writer and the drive
	// (default 2 GiB: seconds of drive rate). Writing starts when it is
	// StartFill full (0.9) and stops at StopFill (0.1).
	RingSize            int64
	StartFill, StopFill float64
	// MinRate is the drive's lowest matched speed (bytes/s). A source
	// slower than that is spooled to SpoolDir a bundle at a time, then
	// streamed at full speed.
	MinRate  float64
	SpoolDir string
	// Now is the clock (virtual with the emulator); default: monotonic
	// wall time since New.
	Now func() time.Duration
	// Stored is called once per object, after a flushing filemark made
	// the bundle holding it durable.
	Stored func(obj Object, pos events.TapePosition)
	// Failpoints: crash tests arm FailBeforeFilemark and FailAfterFilemark.
	Failpoints failpoint.Set
	// Event reports volume events (optional).
	Event  func(VolumeEvent)
	Logger *slog.Logger
}

// EnsureDefaults fills unset fields.
func (c *Config) EnsureDefaults() {
	if c.BundleSize == 0 {
		c.BundleSize = 16 << 30
	}
	if c.BundleAge == 0 {
		c.BundleAge = 10 * time.Minute
	}
	if c.FlushEvery == 0 {
		c.FlushEvery = 1
	}
	if c.RingSize == 0 {
		c.RingSize = 2 << 30
	}
	if c.StartFill == 0 {
		c.StartFill = 0.9
	}
	if c.StopFill == 0 {
		c.StopFill = 0.1
	}
	if c.MinRate == 0 {
		c.MinRate = tape.LTO9().MinRate
	}
	if c.Now == nil {
		start := time.Now()
		c.Now = func() time.Duration { return time.Since(start) }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Event == nil {
		c.Event = func(VolumeEvent) {}
	}
}

// ConfigError is a bad Config field.
type ConfigError struct {
	Field string
	Value any
	Err   error
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("tapewriter config %s=%v: %v", e.Field, e.Value, e.Err)
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Validate checks c (after EnsureDefaults).
func (c *Config) Validate() error {
	bad := func(f string, v any, msg string) error { return &ConfigError{f, v, fmt.Errorf("%s", msg)} }
	switch {
	case c.Pool == "":
		return bad("Pool", c.Pool, "required")
	case len(c.Volumes) == 0:
		return bad("Volumes", c.Volumes, "at least one volume")
	case c.Changer == nil:
		return bad("Changer", nil, "required")
	case c.Stored == nil:
		return bad("Stored", nil, "required")
	case c.BundleSize < bundle.MaxBlockSize:
		return bad("BundleSize", c.BundleSize, "at least one block")
	case c.RingSize < 4*bundle.MaxBlockSize:
		return bad("RingSize", c.RingSize, "at least 4 MiB")
	case !(c.StopFill > 0 && c.StopFill < c.StartFill && c.StartFill <= 1):
		return bad("StartFill/StopFill", [2]float64{c.StartFill, c.StopFill}, "want 0 < stop < start <= 1")
	case c.FlushEvery < 0:
		return bad("FlushEvery", c.FlushEvery, "negative")
	case c.MinRate < 0:
		return bad("MinRate", c.MinRate, "negative")
	case c.SpoolDir == "":
		return bad("SpoolDir", c.SpoolDir, "required")
	}
	return nil
}
