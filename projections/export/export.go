// Package export writes the catalog as Parquet through DuckDB: files.parquet
// (one row per file version) and copies.parquet (one row per stored copy).
// The columns are documented in docs/EXPORT.md.
//
// DuckDB is linked with cgo and is large, so it is confined to this package:
// nothing else in Strata imports duckdb-go.
//
// Each file is written under a temporary name in the target directory,
// fsynced and renamed into place, and the directory is fsynced: a crash
// leaves the previous file or the new one, never half a file (a stale
// temporary file is removed by the next export).
package export

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/strata-hsm/strata/projections/catalog"
)

// Names of the files written.
const (
	FilesName  = "files.parquet"
	CopiesName = "copies.parquet"
)

const filesTable = `CREATE TABLE files (
	file_id         VARCHAR NOT NULL,
	path            VARCHAR NOT NULL,
	root            VARCHAR,
	state           VARCHAR NOT NULL,
	version         UINTEGER,
	current         BOOLEAN NOT NULL,
	object_id       VARCHAR,
	size            BIGINT NOT NULL,
	mode            UINTEGER NOT NULL,
	uid             UINTEGER NOT NULL,
	gid             UINTEGER NOT NULL,
	mtime           TIMESTAMP_NS,
	inode           UBIGINT NOT NULL,
	packed_path     VARCHAR,
	packed_size     BIGINT,
	packed_sum      VARCHAR,
	frame_size      BIGINT,
	frames          BIGINT,
	archived_at     TIMESTAMP_NS,
	recalls         UBIGINT NOT NULL,
	recall_failures UBIGINT NOT NULL,
	updated_at      TIMESTAMP_NS,
	seq             UBIGINT NOT NULL
)`

const copiesTable = `CREATE TABLE copies (
	object_id    VARCHAR NOT NULL,
	tier         VARCHAR NOT NULL,
	tier_kind    VARCHAR NOT NULL,
	location     VARCHAR NOT NULL,
	size         BIGINT NOT NULL,
	packed_size  BIGINT NOT NULL,
	packed_sum   VARCHAR NOT NULL,
	state        VARCHAR NOT NULL,
	reason       VARCHAR,
	stored_at    TIMESTAMP_NS,
	verified_at  TIMESTAMP_NS,
	tape_volume  VARCHAR,
	tape_file    BIGINT,
	tape_block   BIGINT,
	tape_offset  BIGINT,
	seq          UBIGINT NOT NULL
)`

// Result says what Parquet wrote.
type Result struct {
	Seq    uint64 // the catalog's last applied sequence at the snapshot
	Files  int    // rows in files.parquet
	Copies int    // rows in copies.parquet
}

// Progress is how far an export is, as Options.Progress is told.
type Progress struct {
	Step string `json:"step"` // "reading the catalog", "writing files.parquet", "writing copies.parquet"
	Rows int64  `json:"rows"` // rows appended so far (files and copies)
}

// Options of ParquetWith.
type Options struct {
	// Progress, if set, is called from the exporting goroutine at each
	// step and every 4096 rows; it must return quickly.
	Progress func(Progress)
}

// Parquet writes files.parquet and copies.parquet of one consistent
// snapshot of cat into dir (created if missing), replacing earlier exports.
func Parquet(ctx context.Context, cat *catalog.Catalog, dir string) (Result, error) {
	return ParquetWith(ctx, cat, dir, Options{})
}

// ParquetWith is Parquet, telling opts.Progress how it advances.
func ParquetWith(ctx context.Context, cat *catalog.Catalog, dir string, opts Options) (Result, error) {
	report := func(p Progress) {
		if opts.Progress != nil {
			opts.Progress(p)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("export: %w", err)
	}
	tmpFiles := filepath.Join(dir, "."+FilesName+".tmp")
	tmpCopies := filepath.Join(dir, "."+CopiesName+".tmp")
	for _, p := range []string{tmpFiles, tmpCopies} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return Result{}, fmt.Errorf("export: remove stale %w", err)
		}
	}

	connector, err := duckdb.NewConnector("", nil)
	if err != nil {
		return Result{}, fmt.Errorf("export: open duckdb: %w", err)
	}
	defer connector.Close()
	db := sql.OpenDB(connector)
	defer db.Close()
	for _, q := range []string{filesTable, copiesTable} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return Result{}, fmt.Errorf("export: %w", err)
		}
	}
	report(Progress{Step: "reading the catalog"})
	res, err := fill(ctx, connector, cat, report)
	if err != nil {
		return Result{}, err
	}

	meta := fmt.Sprintf("KV_METADATA {strata_seq: '%d', strata_catalog_format: '%d'}", res.Seq, catalog.FormatVersion)
	for _, w := range []struct{ table, tmp, final string }{
		{"files", tmpFiles, filepath.Join(dir, FilesName)},
		{"copies", tmpCopies, filepath.Join(dir, CopiesName)},
	} {
		report(Progress{Step: "writing " + filepath.Base(w.final), Rows: int64(res.Files + res.Copies)})
		// No ORDER BY: sorting 1M rows cost ~10 % of the export; rows
		// come in file id (files) and object id (copies) order.
		q := fmt.Sprintf("COPY %s TO %s (FORMAT parquet, COMPRESSION zstd, %s)", w.table, quote(w.tmp), meta)
		if _, err := db.ExecContext(ctx, q); err != nil {
			os.Remove(w.tmp)
			return Result{}, fmt.Errorf("export: write %s: %w", w.final, err)
		}
		if err := commitFile(w.tmp, w.final); err != nil {
			return Result{}, err
		}
	}
	if err := syncDir(dir); err != nil {
		return Result{}, err
	}
	return res, nil
}

// fill appends the catalog's rows to the two tables, each through its own
// connection and appender, concurrently.
func fill(ctx context.Context, connector *duckdb.Connector, cat *catalog.Catalog, report func(Progress)) (Result, error) {
	files, closeFiles, err := appender(ctx, connector, "files")
	if err != nil {
		return Result{}, err
	}
	copies, closeCopies, err := appender(ctx, connector, "copies")
	if err != nil {
		closeFiles()
		return Result{}, err
	}
	var res Result
	fp, cp := newPipe(files, filesColumns), newPipe(copies, copiesColumns)
	seq, err := cat.Scan(catalog.ScanFuncs{
		File: func(f *catalog.File, versions []catalog.Version) error {
			if res.Files++; res.Files%4096 == 0 {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				report(Progress{Step: "reading the catalog", Rows: int64(res.Files + res.Copies)})
			}
			res.Files += max(len(versions), 1) - 1
			appendFile(fp, f, versions)
			return nil
		},
		Copy: func(c *catalog.Copy) error {
			if res.Copies++; res.Copies%4096 == 0 {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				report(Progress{Step: "reading the catalog", Rows: int64(res.Files + res.Copies)})
			}
			appendCopy(cp, c)
			return nil
		},
	})
	cerr := errors.Join(fp.close(), cp.close(), closeFiles(), closeCopies())
	if err != nil {
		return Result{}, fmt.Errorf("export: %w", err)
	}
	if cerr != nil {
		return Result{}, fmt.Errorf("export: append: %w", cerr)
	}
	res.Seq = seq
	return res, nil
}

// appender opens a connection and an appender to table; close flushes the
// appender and closes both.
func appender(ctx context.Context, connector *duckdb.Connector, table string) (*duckdb.Appender, func() error, error) {
	conn, err := connector.Connect(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("export: %w", err)
	}
	a, err := duckdb.NewAppenderFromConn(conn, "", table)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("export: appender %s: %w", table, err)
	}
	return a, func() error { return errors.Join(a.Close(), conn.Close()) }, nil
}

const (
	filesColumns  = 23
	copiesColumns = 16
)

func appendFile(p *pipe, f *catalog.File, versions []catalog.Version) {
	if len(versions) == 0 {
		// Known but never packed: one row with the file's own stat.
		row := p.row()
		row[0], row[1], row[2], row[3] = f.ID, text(f.Path), nullString(f.Root), f.State.String()
		row[4], row[5], row[6] = nil, true, nullString(f.ObjectID)
		row[7], row[8], row[9], row[10], row[11], row[12] = f.Stat.Size, f.Stat.Mode, f.Stat.UID, f.Stat.GID, nsTime(f.Stat.MtimeNS), f.Stat.Inode
		row[13], row[14], row[15], row[16], row[17], row[18] = nil, nil, nil, nil, nil, nil
		row[19], row[20], row[21], row[22] = f.Recalls, f.RecallFailures, nullTime(f.Updated), f.Seq
		return
	}
	for i := range versions {
		v := &versions[i]
		row := p.row()
		row[0], row[1], row[2], row[3] = f.ID, text(f.Path), nullString(f.Root), f.State.String()
		row[4], row[5], row[6] = v.Number, v.Number == f.Version, v.ObjectID
		row[7], row[8], row[9], row[10], row[11], row[12] = v.Stat.Size, v.Stat.Mode, v.Stat.UID, v.Stat.GID, nsTime(v.Stat.MtimeNS), v.Stat.Inode
		row[13], row[14], row[15], row[16], row[17], row[18] = text(v.Path), v.PackedSize, v.PackedSum, v.FrameSize, v.Frames, nullTime(v.ArchivedAt)
		row[19], row[20], row[21], row[22] = f.Recalls, f.RecallFailures, nullTime(f.Updated), f.Seq
	}
}

func appendCopy(p *pipe, c *catalog.Copy) {
	row := p.row()
	row[0], row[1], row[2], row[3] = c.ObjectID, c.Tier, c.TierKind, text(c.Location)
	row[4], row[5], row[6], row[7], row[8] = c.Size, c.PackedSize, c.PackedSum, c.State.String(), nullString(c.Reason)
	row[9], row[10] = nullTime(c.StoredAt), nullTime(c.VerifiedAt)
	if t := c.Tape; t != nil {
		row[11], row[12], row[13], row[14] = t.Volume, t.TapeFile, t.Block, t.Offset
	} else {
		row[11], row[12], row[13], row[14] = nil, nil, nil, nil
	}
	row[15] = c.Seq
}

// pipe hands rows from the catalog scan to an appender goroutine in
// batches, so that decoding and appending run on two cores.
type pipe struct {
	width int
	cur   []driver.Value // rows being filled, flat
	full  chan []driver.Value
	free  chan []driver.Value
	done  chan error
}

const pipeRows, pipeBufs = 2048, 4

func newPipe(a *duckdb.Appender, width int) *pipe {
	p := &pipe{width: width, full: make(chan []driver.Value, pipeBufs),
		free: make(chan []driver.Value, pipeBufs), done: make(chan error, 1)}
	for range pipeBufs {
		p.free <- make([]driver.Value, 0, width*pipeRows)
	}
	p.cur = <-p.free
	go func() {
		var err error
		for buf := range p.full {
			// After an error keep draining, so the producer never blocks.
			for i := 0; err == nil && i < len(buf); i += width {
				err = a.AppendRow(buf[i : i+width]...)
			}
			clear(buf)
			p.free <- buf[:0]
		}
		p.done <- err
	}()
	return p
}

// row returns the next row to fill; every column must be set.
func (p *pipe) row() []driver.Value {
	if len(p.cur)+p.width > cap(p.cur) {
		p.full <- p.cur
		p.cur = <-p.free
	}
	n := len(p.cur)
	p.cur = p.cur[:n+p.width]
	return p.cur[n:]
}

// close hands over the last rows, waits for the appender goroutine and
// returns its first error.
func (p *pipe) close() error {
	if len(p.cur) > 0 {
		p.full <- p.cur
	}
	close(p.full)
	return <-p.done
}

func nullString(s string) driver.Value {
	if s == "" {
		return nil
	}
	return text(s)
}

// text makes s valid UTF-8 (DuckDB's VARCHAR), replacing invalid bytes with
// U+FFFD. Events carry paths as JSON strings, which cannot hold such bytes
// either, so this is a guard, not a conversion that happens in practice.
func text(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func nullTime(t time.Time) driver.Value {
	if t.IsZero() {
		return nil
	}
	return t.UTC()
}

func nsTime(ns int64) driver.Value {
	if ns == 0 {
		return nil
	}
	return time.Unix(0, ns).UTC()
}

// quote returns s as an SQL string literal.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// commitFile fsyncs tmp and renames it to final.
func commitFile(tmp, final string) error {
	f, err := os.Open(tmp)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("export: %s: %w", final, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("export: sync %s: %w", dir, err)
	}
	return nil
}
