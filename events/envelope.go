// Package events defines Strata's event contract: the CloudEvents 1.0
// envelope, one Go type per event, the NATS subjects they travel on, and
// strict encoding and decoding.
//
// Events are immutable facts in the past tense. A type's meaning never
// changes: new fields may be added (decoders ignore fields they do not know),
// a change of meaning needs a new type version. The JSON Schemas in the
// schemas package are the published contract; tests keep the two in step.
//
// Subject strings exist only in this package.
package events

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Envelope constants.
const (
	SpecVersion = "1.0"
	ContentType = "application/json"
)

// Errors returned by Decode and Validate.
var (
	ErrMalformed   = errors.New("events: malformed event")
	ErrUnknownType = errors.New("events: unknown event type")
	ErrInvalid     = errors.New("events: invalid event")
)

// Envelope is a CloudEvents 1.0 event in structured JSON mode.
type Envelope struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            time.Time       `json:"time"`
	Subject         string          `json:"subject,omitempty"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`

	// Seq is the stream sequence the event was read at (0 when not read
	// from the stream). It is not part of the wire format.
	Seq uint64 `json:"-"`
	// Host is the host token of the subject the event was read from
	// (strata.<host>.…; "" when not read from the stream): the host that
	// published it, the one every stage's subject filter goes by. It is
	// not part of the wire format.
	Host string `json:"-"`
}

// Event is the payload of one event type.
type Event interface {
	// Kind names the event type.
	Kind() Kind
	// Validate reports whether the payload is complete and consistent.
	Validate() error
	// Entity is the id of the entity the event is about (a file id or an
	// object id); it becomes the CloudEvents subject.
	Entity() string
}

// Kind names an event type: an aggregate (file, object, recall, …) and a
// past-tense fact about it.
type Kind struct {
	Aggregate string
	Name      string
	Version   int
}

// Type is the CloudEvents type, e.g. "strata.file.released.v1".
func (k Kind) Type() string {
	return fmt.Sprintf("strata.%s.%s.v%d", k.Aggregate, k.Name, k.Version)
}

// String returns "aggregate.name", the short name used in logs and docs.
func (k Kind) String() string { return k.Aggregate + "." + k.Name }

// NewID returns a deterministic event id for a piece of work: the same kind
// and parts always give the same id, so a retried publish is deduplicated by
// the stream (Nats-Msg-Id) instead of being recorded twice.
func NewID(k Kind, parts ...string) string {
	h := sha256.New()
	h.Write([]byte(k.Type()))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// New wraps an event in an envelope. id should come from NewID for work that
// may be retried.
func New(id, source string, at time.Time, ev Event) (Envelope, error) {
	if err := ev.Validate(); err != nil {
		return Envelope{}, fmt.Errorf("%w: %s: %w", ErrInvalid, ev.Kind(), err)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return Envelope{}, fmt.Errorf("encode %s: %w", ev.Kind(), err)
	}
	env := Envelope{
		SpecVersion:     SpecVersion,
		ID:              id,
		Source:          source,
		Type:            ev.Kind().Type(),
		Time:            at.UTC(),
		Subject:         ev.Entity(),
		DataContentType: ContentType,
		Data:            data,
	}
	if err := env.validate(); err != nil {
		return Envelope{}, err
	}
	return env, nil
}

// Source returns the CloudEvents source of a stage on a host.
func Source(host, stage string) string { return "/strata/" + host + "/" + stage }

// SourceHost returns the host of a source made by Source ("" for any
// other source).
//
// Where an event was read from the stream, its subject's host
// (Envelope.Host) is the one to go by: Source is whatever the publisher
// wrote, and nothing checks it against the subject.
func SourceHost(source string) string {
	rest, ok := strings.CutPrefix(source, "/strata/")
	if !ok {
		return ""
	}
	host, _, ok := strings.Cut(rest, "/")
	if !ok || !ValidToken(host) {
		return ""
	}
	return host
}

// Encode returns the structured-mode JSON of env.
func Encode(env Envelope) ([]byte, error) {
	if err := env.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(env)
}

// Decode parses and validates a structured-mode CloudEvent and its payload.
// Any error wraps ErrMalformed, ErrUnknownType or ErrInvalid; such a message
// belongs in a dead-letter subject, never in a retry loop.
func Decode(b []byte) (Envelope, Event, error) {
	var env Envelope
	if !decodeEnvelopeFast(b, &env) {
		env = Envelope{}
		if err := json.Unmarshal(b, &env); err != nil {
			return Envelope{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
	}
	if err := env.validate(); err != nil {
		return Envelope{}, nil, err
	}
	ev, err := DecodeData(env.Type, env.Data)
	if err != nil {
		return Envelope{}, nil, err
	}
	return env, ev, nil
}

// DecodeData decodes and validates the payload of an event of type typ.
func DecodeData(typ string, data []byte) (Event, error) {
	newEvent, ok := registry[typ]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	ev := newEvent()
	if err := json.Unmarshal(data, ev); err != nil {
		return nil, fmt.Errorf("%w: %s data: %w", ErrMalformed, typ, err)
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, typ, err)
	}
	return ev, nil
}

func (env *Envelope) validate() error {
	switch {
	case env.SpecVersion != SpecVersion:
		return fmt.Errorf("%w: specversion %q, want %q", ErrMalformed, env.SpecVersion, SpecVersion)
	case env.ID == "":
		return fmt.Errorf("%w: empty id", ErrMalformed)
	case env.Source == "":
		return fmt.Errorf("%w: empty source", ErrMalformed)
	case env.Type == "":
		return fmt.Errorf("%w: empty type", ErrMalformed)
	case env.Time.IsZero():
		return fmt.Errorf("%w: missing time", ErrMalformed)
	case env.DataContentType != ContentType:
		return fmt.Errorf("%w: datacontenttype %q, want %q", ErrMalformed, env.DataContentType, ContentType)
	case len(env.Data) == 0 || env.Data[0] != '{':
		return fmt.Errorf("%w: data must be a JSON object", ErrMalformed)
	}
	return nil
}

// kindByType maps a CloudEvents type to its kind.
var kindByType = func() map[string]Kind {
	m := map[string]Kind{}
	for _, k := range Kinds() {
		m[k.Type()] = k
	}
	return m
}()

// KindOf returns the kind of a CloudEvents type, if Strata knows it.
func KindOf(typ string) (Kind, bool) {
	k, ok := kindByType[typ]
	return k, ok
}

// SubjectOf returns the subject env travels on when published by host.
func SubjectOf(host string, env Envelope) (string, error) {
	k, ok := KindOf(env.Type)
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrUnknownType, env.Type)
	}
	return Subject(host, k), nil
}
