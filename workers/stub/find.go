package stub

import (
	"errors"
	"fmt"

	"github.com/strata-hsm/strata/projections/catalog"
)

// catalogFiles is what Find asks of the catalog.
type catalogFiles interface {
	File(fileID string) (catalog.File, error)
	FileByPath(path string) (catalog.File, error)
}

// Find returns the catalog's record of the file at path. A file's identity
// is its id, kept in its xattrs, not its path: a stub renamed or
// hard-linked elsewhere is found by its id, and a new file created where
// an archived one was is not taken for it. A file without xattrs (not
// released yet) is looked up by path. A path that holds no file gives an
// error wrapping os.ErrNotExist.
func Find(cat catalogFiles, path string) (catalog.File, error) {
	info, err := ReadPath(path)
	if err == nil {
		return cat.File(info.FileID)
	}
	if !errors.Is(err, ErrNotManaged) {
		return catalog.File{}, err
	}
	f, err := cat.FileByPath(path)
	if err == nil && (f.State == catalog.StateReleased || f.State == catalog.StateArchived) {
		// Those states come with xattrs: the file here now is another.
		return catalog.File{}, fmt.Errorf("%s: %w (another file took its path)", path, catalog.ErrNotFound)
	}
	return f, err
}
