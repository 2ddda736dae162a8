package volume

import (
	"context"
	"errors"
	"fmt"

	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// Status is one cartridge of a device, as `strata tape ls` shows it.
type Status struct {
	Barcode   string `json:"barcode"`
	Volume    string `json:"volume,omitempty"`
	Pool      string `json:"pool,omitempty"`
	BlockSize int    `json:"block_size,omitempty"`
	Sequence  int    `json:"sequence,omitempty"`
	State     string `json:"state"` // writable, full, write-protected, unlabelled, label-mismatch, error
	Used      int64  `json:"used_bytes"`
	Capacity  int64  `json:"capacity_bytes,omitempty"` // emulated cartridges only
	Error     string `json:"error,omitempty"`
}

// barcodes lists what dev can mount: every cartridge of an emulated
// library, or "" (the loaded cartridge) for a real drive.
func barcodes(dev *tape.Device) ([]string, error) {
	if !dev.Emulated() {
		return []string{""}, nil
	}
	return dev.Barcodes()
}

// List reads the label and fill of every cartridge of dev.
func List(ctx context.Context, dev *tape.Device) ([]Status, error) {
	bcs, err := barcodes(dev)
	if err != nil {
		return nil, err
	}
	var out []Status
	for _, b := range bcs {
		v := Status{Barcode: b}
		if u, ok, err := dev.Usage(b); ok && err == nil {
			v.Used, v.Capacity = u.Used, u.Capacity
		}
		d, err := dev.Mount(ctx, b)
		if err != nil {
			v.State, v.Error = "error", err.Error()
			out = append(out, v)
			continue
		}
		l, err := bundle.ReadLabel(d)
		st, serr := d.Status()
		switch {
		case serr != nil:
			v.State, v.Error = "error", serr.Error()
		case err != nil:
			v.State = "unlabelled"
		default:
			v.Volume, v.Pool, v.BlockSize, v.Sequence = l.Volume, l.Pool, l.BlockSize, l.Sequence
			v.State = "writable"
			if b == "" {
				v.Barcode = l.Volume
			}
			if err := d.EndOfData(); err == nil {
				if st2, err := d.Status(); err == nil && st2.EOT {
					v.State = "full"
				}
				if !dev.Emulated() {
					if blk, err := d.Tell(); err == nil {
						v.Used = blk * int64(l.BlockSize) // blocks (and filemarks) × block size: an estimate
					}
				}
			}
			switch {
			case st.WriteProtected:
				v.State = "write-protected"
			case b != "" && l.Volume != b:
				v.State, v.Error = "label-mismatch", fmt.Sprintf("label says volume %q", l.Volume)
			}
		}
		out = append(out, v)
	}
	return out, dev.Dismount(ctx, "")
}

// RebuildDevice reads every volume of dev (Rebuild) and returns the records
// of its verified objects, with the volumes read. Cartridges that carry no
// Strata label are skipped. wrap, if set, wraps each mounted drive (to
// count the bytes read).
func RebuildDevice(ctx context.Context, dev *tape.Device, wrap func(tape.Drive) tape.Drive) ([]Record, []Info, error) {
	bcs, err := barcodes(dev)
	if err != nil {
		return nil, nil, err
	}
	var recs []Record
	var infos []Info
	for _, b := range bcs {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		d, err := dev.Mount(ctx, b)
		if err != nil {
			return nil, nil, err
		}
		if wrap != nil {
			d = wrap(d)
		}
		vr, info, err := Rebuild(d)
		if errors.Is(err, bundle.ErrFormat) && info.Label.Volume == "" {
			continue // not a Strata cartridge
		}
		if err != nil {
			return nil, nil, fmt.Errorf("volume %s: %w", b, err)
		}
		infos = append(infos, info)
		recs = append(recs, vr...)
	}
	return recs, infos, dev.Dismount(ctx, "")
}
