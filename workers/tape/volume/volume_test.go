package volume

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
	"github.com/zeebo/blake3"
)

func hexsum(b []byte) string { s := blake3.Sum256(b); return hex.EncodeToString(s[:]) }

func TestLabelScanVerifyRebuild(t *testing.T) {
	m := tape.LTO9()
	m.LoadTime = time.Second
	dir := filepath.Join(t.TempDir(), "V1")
	if err := tape.CreateCartridge(dir, tape.Cartridge{Capacity: 256 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := tape.OpenEmulator(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	const bs = bundle.MinBlockSize
	if err := Label(d, "V1", "pool", bs, 1, false); err != nil {
		t.Fatal(err)
	}
	if err := Label(d, "V9", "pool", bs, 1, false); !errors.Is(err, ErrLabelled) {
		t.Fatalf("relabel = %v, want ErrLabelled", err)
	}
	if err := d.EndOfData(); err != nil {
		t.Fatal(err)
	}
	type want struct {
		data []byte
		pos  events.TapePosition
	}
	written := map[string]want{}
	var dataOff int64
	for f := int64(1); f <= 3; f++ {
		start, _ := d.Tell()
		w, _ := bundle.NewWriter(bs, bundle.Header{Bundle: "b" + string(rune('0'+f)), Part: 1}, d.WriteBlock)
		for i := range 7 {
			b := bytes.Repeat([]byte{byte(f), byte(i)}, 50_000*(i+1))
			id := hexsum(b)
			e, err := w.Add(id, []byte(`{"n":1}`), int64(len(b)), id, bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			written[id] = want{b, bundle.Position("V1", f, start, bs, e.DataOffset)}
			if f == 2 && i == 3 {
				// Data file offset: records before are all bs bytes, and two of
				// the logical blocks before file 2 are filemarks (no data).
				dataOff = int64(bs)*(start-2) + e.DataOffset + 100
			}
		}
		w.Close(nil)
		d.WriteFilemarks(1, f == 3)
	}
	recs, info, err := Rebuild(d)
	if err != nil {
		t.Fatal(err)
	}
	if info.Label.Volume != "V1" || len(info.Files) != 3 || len(recs) != 21 {
		t.Fatalf("info %+v, %d records", info.Label, len(recs))
	}
	for _, r := range recs {
		w, ok := written[r.ObjectID]
		if !ok || r.Pos != w.pos || r.PackedSize != int64(len(w.data)) || string(r.Manifest) != `{"n":1}` || r.Pool != "pool" {
			t.Fatalf("record %+v, want pos %+v", r, w.pos)
		}
	}
	if _, err := Verify(d); err != nil {
		t.Fatal(err)
	}
	// Damage one object on the medium: verify names it, rebuild skips it.
	d.Close()
	off := dataOff
	f, _ := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR, 0)
	b := []byte{0}
	f.ReadAt(b, off)
	b[0] ^= 0x55
	f.WriteAt(b, off)
	f.Close()
	d, err = tape.OpenEmulator(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := Verify(d); !errors.Is(err, ErrDamaged) || !errors.Is(err, bundle.ErrChecksum) {
		t.Fatalf("verify damaged = %v", err)
	}
	recs, _, err = Rebuild(d)
	if err != nil || len(recs) != 20 {
		t.Fatalf("rebuild damaged: %d records, %v", len(recs), err)
	}
}
