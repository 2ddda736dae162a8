package stub

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/strata-hsm/strata/workers/stratatest"
)

const (
	testFileID   = "0123456789abcdef0123456789abcdef"
	testObjectID = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
)

func TestRecordRoundTrip(t *testing.T) {
	for _, in := range []Info{
		{FileID: testFileID, ObjectID: testObjectID, State: Released, Size: 4096, MtimeNS: 1_764_000_000_123_456_789, ReleaseID: "123456"},
		{FileID: testFileID, ObjectID: testObjectID, State: Archived, Size: 0, MtimeNS: -5},
		{FileID: testFileID, ObjectID: testObjectID, State: Released, Size: 1 << 40, MtimeNS: 0, ReleaseID: "18446744073709551615"},
		{FileID: testFileID, ObjectID: testObjectID, State: Archived, Size: maxSize, MtimeNS: -1 << 63},
	} {
		rec, err := encode(in)
		if err != nil {
			t.Fatalf("encode %+v: %v", in, err)
		}
		out, err := decode(rec)
		if err != nil || out != in {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", in, out, err)
		}
	}
	// The small-file record fits the ext4 256-byte inode (see record.go).
	rec, _ := encode(Info{FileID: testFileID, ObjectID: testObjectID, State: Released, Size: 2<<20 - 1, MtimeNS: 1, ReleaseID: "268435455"})
	if len(rec) > 64 {
		t.Fatalf("record of a file under 2 MiB: %d bytes, want at most 64", len(rec))
	}
}

func TestRecordRejects(t *testing.T) {
	good := Info{FileID: testFileID, ObjectID: testObjectID, State: Released, Size: 1, MtimeNS: 1, ReleaseID: "7"}
	for name, in := range map[string]Info{
		"state":         {FileID: testFileID, ObjectID: testObjectID, State: "gone"},
		"short file id": {FileID: "abc", ObjectID: testObjectID, State: Released},
		"upper case":    {FileID: strings.ToUpper(testFileID), ObjectID: testObjectID, State: Released},
		"object id":     {FileID: testFileID, ObjectID: "zz" + testObjectID[2:], State: Released},
		"size":          {FileID: testFileID, ObjectID: testObjectID, State: Released, Size: -1},
		"huge size":     {FileID: testFileID, ObjectID: testObjectID, State: Released, Size: maxSize + 1},
		"release":       {FileID: testFileID, ObjectID: testObjectID, State: Released, ReleaseID: "r1"},
	} {
		if _, err := encode(in); err == nil {
			t.Errorf("%s: encode(%+v) succeeded", name, in)
		}
	}
	rec, _ := encode(good)
	for name, b := range map[string][]byte{
		"empty":    nil,
		"short":    rec[:recordFixed],
		"version":  append([]byte{0x21}, rec[1:]...),
		"state":    append([]byte{0x13}, rec[1:]...),
		"trailing": append(append([]byte(nil), rec...), 0),
		"varint":   append(append([]byte(nil), rec[:recordFixed]...), 0xff, 0xff),
	} {
		if _, err := decode(b); !errors.Is(err, ErrBadRecord) {
			t.Errorf("%s: decode = %v, want ErrBadRecord", name, err)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	rec, _ := encode(Info{FileID: testFileID, ObjectID: testObjectID, State: Released, Size: 4096, MtimeNS: 9, ReleaseID: "3"})
	f.Add(rec)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := decode(b)
		if err != nil {
			if !errors.Is(err, ErrBadRecord) {
				t.Fatalf("decode error %v does not wrap ErrBadRecord", err)
			}
			return
		}
		// What decodes encodes back to the same bytes.
		again, err := encode(in)
		if err != nil || string(again) != string(b) {
			t.Fatalf("decode(%x) = %+v; encode gives %x, %v", b, in, again, err)
		}
	})
}

// TestStubCostsNoBlock: on ext4 with 4 KiB blocks and 256-byte inodes and
// on XFS with 512-byte inodes, a released 4 KiB file (its blocks punched,
// its record set) allocates nothing, where the first format's six xattrs
// took an xattr block on ext4; a stub written in the first format reads
// the same, and Write turns it into the record.
func TestStubCostsNoBlock(t *testing.T) {
	for _, fs := range stratatest.FSTypes {
		t.Run(fs, func(t *testing.T) {
			args := []string{"-b", "4096", "-I", "256"}
			if fs == "xfs" {
				args = []string{"-b", "size=4096", "-i", "size=512"}
			}
			mnt := stratatest.LoopMount(t, fs, 300<<20, args...)
			in := Info{FileID: testFileID, ObjectID: testObjectID, State: Released, Size: 4096, MtimeNS: 1_764_000_000_123_456_789, ReleaseID: "1234567"}
			released := func(name string, mark func(fd int)) int64 {
				p := filepath.Join(mnt, name)
				if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
					t.Fatal(err)
				}
				fd, err := unix.Open(p, unix.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				mark(fd)
				if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
					t.Fatal(err)
				}
				if err := unix.Fsync(fd); err != nil {
					t.Fatal(err)
				}
				var st unix.Stat_t
				if err := unix.Fstat(fd, &st); err != nil {
					t.Fatal(err)
				}
				got, err := Read(fd)
				if err != nil || got != in {
					t.Fatalf("%s: Read = %+v, %v; want %+v", name, got, err, in)
				}
				return st.Blocks * 512
			}
			if n := released("record", func(fd int) {
				if err := Write(fd, in); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Errorf("a released 4 KiB file with the record allocates %d bytes, want 0", n)
			}
			legacy := released("legacy", func(fd int) { writeLegacy(t, fd, in) })
			t.Logf("%s: a released 4 KiB file allocates 0 bytes with the record, %d with the first format's xattrs", fs, legacy)
			if fs == "ext4" && legacy == 0 {
				t.Errorf("the first format's xattrs fit the inode on ext4: this test no longer shows what the record saves")
			}

			// A first-format stub: read as it is, rewritten as the record.
			p := filepath.Join(mnt, "legacy")
			fd, err := unix.Open(p, unix.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			in.State = Archived
			if err := Write(fd, in); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4096)
			n, err := unix.Flistxattr(fd, buf)
			if err != nil || string(buf[:n]) != Xattr+"\x00" {
				t.Fatalf("xattrs after Write on a first-format stub: %q, %v; want only %s", buf[:n], err, Xattr)
			}
			if got, err := ReadPath(p); err != nil || got != in {
				t.Fatalf("ReadPath = %+v, %v; want %+v", got, err, in)
			}
			if err := SetState(fd, Released); err != nil {
				t.Fatal(err)
			}
			if got, _ := Read(fd); got.State != Released || got.ObjectID != in.ObjectID {
				t.Fatalf("after SetState: %+v", got)
			}
			if err := Clear(fd); err != nil {
				t.Fatal(err)
			}
			if _, err := Read(fd); !errors.Is(err, ErrNotManaged) {
				t.Fatalf("Read after Clear: %v, want ErrNotManaged", err)
			}
		})
	}
}

// writeLegacy sets the first format's xattrs, as Strata before the record
// wrote them.
func writeLegacy(t *testing.T, fd int, in Info) {
	t.Helper()
	for _, x := range [][2]string{{XattrFileID, in.FileID}, {XattrObjectID, in.ObjectID},
		{XattrSize, "4096"}, {XattrMtime, "1764000000123456789"}, {XattrRelease, in.ReleaseID}, {XattrState, string(in.State)}} {
		if err := unix.Fsetxattr(fd, x[0], []byte(x[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
}
