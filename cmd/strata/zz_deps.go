package main

// Temporary: keeps dependencies in go.mod until the code that uses them lands.
import (
	_ "github.com/BurntSushi/toml"
	_ "github.com/SaveTheRbtz/zstd-seekable-format-go/pkg"
	_ "github.com/cockroachdb/pebble/v2"
	_ "github.com/duckdb/duckdb-go/v2"
	_ "github.com/hanwen/go-fuse/v2/fs"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/minio/minio-go/v7"
	_ "github.com/nats-io/nats-server/v2/server"
	_ "github.com/nats-io/nats.go"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/santhosh-tekuri/jsonschema/v6"
	_ "github.com/zeebo/blake3"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
	_ "lukechampine.com/blake3"
)

func main() {}
