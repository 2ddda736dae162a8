package tape

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// EmulatorPrefix starts a device spec naming an emulated drive:
// "emulator:DIR", where DIR is either one cartridge (it holds
// cartridge.json) or a library whose cartridges are its subdirectories,
// named by barcode (volume id).
const EmulatorPrefix = "emulator:"

// ErrWrongVolume: the drive holds another cartridge than the one asked
// for (a standalone drive: an operator must load it).
var ErrWrongVolume = errors.New("tape: wrong cartridge in the drive")

// Device is the drive (and, for an emulated library, the cartridges) a
// device spec names: "/dev/nstX" (a real st drive with whatever cartridge
// is loaded) or "emulator:DIR". It mounts volumes by barcode for a writer
// or a reader; one user at a time (callers serialise their use).
type Device struct {
	spec string
	// emulated
	emu    *Emulator
	dir    string
	single bool // dir is one cartridge
	// st
	path string
	mu   sync.Mutex
	st   *ST // opened at the first Mount. Protected by mu.
}

// EmulatorModel is the timing model used for emulated devices opened by
// spec: an LTO-9 with a smaller drive buffer (the emulator keeps the
// buffer in RAM). Timing is virtual and never slows anything down.
func EmulatorModel() Model {
	m := LTO9()
	m.Buffer = 64 << 20
	return m
}

// ParseDevice checks a device spec and returns its kind ("st" or
// "emulator") and path.
func ParseDevice(spec string) (kind, path string, err error) {
	if p, ok := strings.CutPrefix(spec, EmulatorPrefix); ok {
		if !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("tape device %q: want emulator:/absolute/dir", spec)
		}
		return "emulator", filepath.Clean(p), nil
	}
	if !filepath.IsAbs(spec) {
		return "", "", fmt.Errorf("tape device %q: want /dev/nstX or emulator:/dir", spec)
	}
	return "st", spec, nil
}

// IsCartridge reports whether dir holds an emulated cartridge.
func IsCartridge(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, cartridgeFile))
	return err == nil
}

// OpenDevice opens the device a spec names. An st device is opened at the
// first Mount (so a daemon can start with the drive empty).
func OpenDevice(spec string) (*Device, error) {
	kind, p, err := ParseDevice(spec)
	if err != nil {
		return nil, err
	}
	d := &Device{spec: spec}
	if kind == "st" {
		d.path = p
		return d, nil
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("tape device %s: %w", spec, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("tape device %s: not a directory", spec)
	}
	d.dir, d.single = p, IsCartridge(p)
	if d.emu, err = NewEmulator(EmulatorModel()); err != nil {
		return nil, err
	}
	return d, nil
}

// Spec returns the device spec.
func (d *Device) Spec() string { return d.spec }

// Emulated reports whether the device is an emulator.
func (d *Device) Emulated() bool { return d.emu != nil }

// Emulator returns the emulated drive (nil for a real one).
func (d *Device) Emulator() *Emulator { return d.emu }

// CartridgeDir is where the emulated cartridge volume lives.
func (d *Device) CartridgeDir(volume string) string {
	if d.single {
		return d.dir
	}
	return filepath.Join(d.dir, volume)
}

// Barcodes lists the cartridges the device can mount: an emulated
// library's cartridge directories (sorted), an emulated cartridge's
// directory name, or, for a real drive, nil (its barcode is known only
// from its label: use Mount("") and read it).
func (d *Device) Barcodes() ([]string, error) {
	if d.emu == nil {
		return nil, nil
	}
	if d.single {
		return []string{filepath.Base(d.dir)}, nil
	}
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("tape device %s: %w", d.spec, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && IsCartridge(filepath.Join(d.dir, e.Name())) {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

// Mount makes the cartridge with barcode volume the one in the drive and
// returns the drive. For an emulated device it ejects whatever the drive
// holds and loads that cartridge; volume "" loads the only cartridge of a
// single-cartridge spec. A real drive cannot change cartridges: Mount
// returns the drive with what is loaded, and the caller checks the label
// (the writer and the recall reader do).
func (d *Device) Mount(_ context.Context, volume string) (Drive, error) {
	if d.emu == nil {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.st == nil {
			st, err := OpenST(d.path, false)
			if errors.Is(err, ErrWriteProtected) {
				st, err = OpenST(d.path, true)
			}
			if err != nil {
				return nil, err
			}
			d.st = st
		}
		return d.st, nil
	}
	dir := d.dir
	if !d.single {
		if volume == "" || strings.ContainsAny(volume, "/\x00") || volume == "." || volume == ".." {
			return nil, fmt.Errorf("mount %q on %s: bad volume id", volume, d.spec)
		}
		dir = filepath.Join(d.dir, volume)
	} else if volume != "" && volume != filepath.Base(d.dir) {
		return nil, fmt.Errorf("mount %s on %s: the device is cartridge %s: %w", volume, d.spec, filepath.Base(d.dir), ErrWrongVolume)
	}
	if !IsCartridge(dir) {
		return nil, fmt.Errorf("mount %s on %s: no such cartridge: %w", volume, d.spec, ErrNoTape)
	}
	if err := d.emu.Eject(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", volume, err)
	}
	if err := d.emu.Insert(dir); err != nil {
		return nil, fmt.Errorf("mount %s: %w", volume, err)
	}
	return d.emu, nil
}

// Dismount is called when a writer is done with a volume. An emulated
// cartridge is ejected (its buffer written out); a real drive keeps its
// cartridge (a standalone drive has no changer).
func (d *Device) Dismount(_ context.Context, _ string) error {
	if d.emu != nil {
		return d.emu.Eject()
	}
	return nil
}

// Close releases the drive (ejecting an emulated cartridge).
func (d *Device) Close() error {
	if d.emu != nil {
		return d.emu.Eject()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st != nil {
		err := d.st.Close()
		d.st = nil
		return err
	}
	return nil
}

// CartridgeUsage is how full an emulated cartridge is.
type CartridgeUsage struct {
	Capacity       int64
	Used           int64 // data bytes recorded
	EarlyWarning   int64
	WriteProtected bool
}

// Usage reports an emulated cartridge's fill from its files (without
// loading it). ok is false for a real drive.
func (d *Device) Usage(volume string) (CartridgeUsage, bool, error) {
	if d.emu == nil {
		return CartridgeUsage{}, false, nil
	}
	dir := d.CartridgeDir(volume)
	c, err := readCartridgeMeta(dir)
	if err != nil {
		return CartridgeUsage{}, true, err
	}
	fi, err := os.Stat(filepath.Join(dir, dataFile))
	if err != nil {
		return CartridgeUsage{}, true, fmt.Errorf("cartridge %s: %w", dir, err)
	}
	return CartridgeUsage{Capacity: c.Capacity, Used: fi.Size(), EarlyWarning: c.EarlyWarning, WriteProtected: c.WriteProtected}, true, nil
}

// DefaultEarlyWarning is the early-warning zone of cartridges created by
// CreateEmulatedCartridge: 1 % of the capacity, at least 4 MiB.
func DefaultEarlyWarning(capacity int64) int64 {
	ew := max(capacity/100, 4<<20)
	if ew >= capacity {
		ew = capacity / 2
	}
	return ew
}
