// Package volume holds the tape volume tools behind `strata tape`:
// labelling a cartridge, listing what a volume holds, verifying every
// hash on it, and rebuilding catalog records from the media alone.
package volume

import (
	"errors"
	"fmt"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/workers/tape"
	"github.com/strata-hsm/strata/workers/tape/bundle"
)

// ErrLabelled: the cartridge already carries a Strata label.
var ErrLabelled = errors.New("volume: cartridge already labelled")

// Label writes a label on the cartridge in d. It refuses a cartridge that
// already has a Strata label unless overwrite (which erases the volume).
func Label(d tape.Drive, volume, pool string, blockSize, sequence int, overwrite bool) error {
	if blockSize == 0 {
		blockSize = bundle.DefaultBlockSize
	}
	l := bundle.Label{Volume: volume, Pool: pool, BlockSize: blockSize, Sequence: sequence, FormatVersion: bundle.FormatVersion}
	if err := l.Validate(); err != nil {
		return err
	}
	if !overwrite {
		if old, err := bundle.ReadLabel(d); err == nil {
			return fmt.Errorf("label %s: holds volume %q of pool %q: %w", volume, old.Volume, old.Pool, ErrLabelled)
		}
	}
	return bundle.WriteLabel(d, l)
}

// File describes one bundle part (tape file) of a volume.
type File struct {
	TapeFile   int64
	StartBlock int64
	Header     bundle.Header
	Continued  *bundle.Continued
	Objects    []bundle.Object
	Bytes      int64 // packed bytes of its objects
	Damaged    int   // objects whose hashes do not match
	Err        error // the tape file could not be read to its end
}

// Info is what a volume holds.
type Info struct {
	Label bundle.Label
	Files []File
	// EndBlock is the logical block of end of data; EOT is set when the
	// volume is past its early warning (full).
	EndBlock int64
	EOT      bool
}

// Scan reads the label and every bundle of the volume in d (reading every
// byte and checking every hash).
func Scan(d tape.Drive) (Info, error) {
	var info Info
	l, err := bundle.ReadLabel(d)
	if err != nil {
		return info, fmt.Errorf("scan: %w", err)
	}
	info.Label = l
	for file := int64(1); ; file++ {
		st, err := d.Status()
		if err != nil {
			return info, fmt.Errorf("scan: %w", err)
		}
		if st.EOD {
			info.EOT = st.EOT
			break
		}
		start, err := d.Tell()
		if err != nil {
			return info, fmt.Errorf("scan: %w", err)
		}
		f := File{TapeFile: file, StartBlock: start}
		fr := bundle.NewFileReader(d)
		c, err := bundle.ReadBundle(fr)
		f.Header, f.Continued, f.Objects = c.Header, c.Continued, c.Objects
		for _, o := range c.Objects {
			f.Bytes += o.PackedSize
			if o.Err != nil {
				f.Damaged++
			}
		}
		if err == nil {
			err = fr.Skip()
		}
		if err != nil {
			f.Err = err
			info.Files = append(info.Files, f)
			// Go on with the next tape file if there is one.
			if errors.Is(err, tape.ErrEndOfData) {
				break
			}
			if serr := fr.Skip(); serr != nil {
				if errors.Is(serr, tape.ErrEndOfData) {
					break
				}
				return info, fmt.Errorf("scan tape file %d: %w", file, serr)
			}
			continue
		}
		info.Files = append(info.Files, f)
	}
	end, err := d.Tell()
	if err != nil {
		return info, fmt.Errorf("scan: %w", err)
	}
	info.EndBlock = end
	return info, nil
}

// ErrDamaged: verify found objects or tape files that do not check.
var ErrDamaged = errors.New("volume: damaged")

// Verify scans the volume and fails with ErrDamaged if any object's hash
// does not match or a tape file cannot be read to its end.
func Verify(d tape.Drive) (Info, error) {
	info, err := Scan(d)
	if err != nil {
		return info, err
	}
	var bad []error
	for _, f := range info.Files {
		if f.Err != nil {
			bad = append(bad, fmt.Errorf("tape file %d: %w", f.TapeFile, f.Err))
		}
		for _, o := range f.Objects {
			if o.Err != nil {
				bad = append(bad, fmt.Errorf("tape file %d: %w", f.TapeFile, o.Err))
			}
		}
	}
	if len(bad) > 0 {
		return info, fmt.Errorf("verify %s: %w: %w", info.Label.Volume, ErrDamaged, errors.Join(bad...))
	}
	return info, nil
}

// Record is what rebuilding the catalog needs to republish
// object.stored for one object copy on tape.
type Record struct {
	ObjectID   string
	Manifest   []byte
	PackedSize int64
	PackedSum  string
	Pos        events.TapePosition
	Pool       string
}

// Rebuild reads the volume in d from the media alone and returns a Record
// for every object whose hashes check (damaged ones are skipped and
// counted in Info).
func Rebuild(d tape.Drive) ([]Record, Info, error) {
	info, err := Scan(d)
	if err != nil {
		return nil, info, err
	}
	var recs []Record
	for _, f := range info.Files {
		for _, o := range f.Objects {
			if o.Err != nil {
				continue
			}
			recs = append(recs, Record{ObjectID: o.ID, Manifest: o.Manifest, PackedSize: o.PackedSize, PackedSum: o.PackedSum,
				Pool: info.Label.Pool,
				Pos:  bundle.Position(info.Label.Volume, f.TapeFile, f.StartBlock, info.Label.BlockSize, o.DataOffset)})
		}
	}
	return recs, info, nil
}
