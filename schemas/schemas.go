// Package schemas holds the JSON Schemas of Strata's events: the public
// contract for anyone who reads the event log. There is one schema per
// event type and version (strata.<aggregate>.<event>.v<N>.json, describing
// the CloudEvents data) and one for the envelope (envelope.v1.json). They are
// embedded in the binary; Validate checks a raw event against them.
package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed *.json
var files embed.FS

// ErrNoSchema is returned for an event type without a schema.
var ErrNoSchema = errors.New("schemas: no schema for event type")

const envelopeFile = "envelope.v1.json"

// FS returns the schema files.
func FS() fs.FS { return files }

// Types returns the event types that have a schema, sorted.
func Types() []string {
	entries, _ := fs.ReadDir(files, ".")
	var out []string
	for _, e := range entries {
		if n := e.Name(); n != envelopeFile {
			out = append(out, strings.TrimSuffix(n, ".json"))
		}
	}
	sort.Strings(out)
	return out
}

// Validator validates raw events against the schemas. It is safe for
// concurrent use.
type Validator struct {
	envelope *jsonschema.Schema
	data     map[string]*jsonschema.Schema
}

// NewValidator compiles every embedded schema.
func NewValidator() (*Validator, error) {
	c := jsonschema.NewCompiler()
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, err
	}
	urls := map[string]string{}
	for _, e := range entries {
		b, err := files.ReadFile(e.Name())
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("schema %s: %w", e.Name(), err)
		}
		url := "file:///" + e.Name()
		if err := c.AddResource(url, doc); err != nil {
			return nil, fmt.Errorf("schema %s: %w", e.Name(), err)
		}
		urls[e.Name()] = url
	}
	v := &Validator{data: map[string]*jsonschema.Schema{}}
	for name, url := range urls {
		s, err := c.Compile(url)
		if err != nil {
			return nil, fmt.Errorf("compile schema %s: %w", name, err)
		}
		if name == envelopeFile {
			v.envelope = s
		} else {
			v.data[strings.TrimSuffix(name, ".json")] = s
		}
	}
	return v, nil
}

// Validate checks a structured-mode CloudEvent: the envelope against
// envelope.v1.json and its data against the schema of its type.
func (v *Validator) Validate(raw []byte) error {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := v.envelope.Validate(doc); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return fmt.Errorf("envelope: %w", err)
	}
	m, _ := doc.(map[string]any)
	return v.ValidateData(head.Type, m["data"])
}

// ValidateData checks the data of an event of type typ. data is either raw
// JSON ([]byte or json.RawMessage) or a value decoded by
// jsonschema.UnmarshalJSON.
func (v *Validator) ValidateData(typ string, data any) error {
	s, ok := v.data[typ]
	if !ok {
		return fmt.Errorf("%w %q", ErrNoSchema, typ)
	}
	switch d := data.(type) {
	case []byte:
		return v.ValidateData(typ, json.RawMessage(d))
	case json.RawMessage:
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(d))
		if err != nil {
			return fmt.Errorf("%s data: not JSON: %w", typ, err)
		}
		data = doc
	}
	if err := s.Validate(data); err != nil {
		return fmt.Errorf("%s data: %w", typ, err)
	}
	return nil
}
