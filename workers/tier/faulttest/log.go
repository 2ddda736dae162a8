package faulttest

import (
	"io"
	"log"
)

func newDiscardLog() *log.Logger { return log.New(io.Discard, "", 0) }
