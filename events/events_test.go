package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/events/eventstest"
	"github.com/strata-hsm/strata/schemas"
)

func validator(t testing.TB) *schemas.Validator {
	t.Helper()
	v, err := schemas.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// samples returns one valid event of every kind, plus variants that exercise
// optional fields.
func samples(t *testing.T) []events.Event {
	var out []events.Event
	for _, k := range events.Kinds() {
		ev := eventstest.Sample(k)
		if ev == nil {
			t.Fatalf("eventstest has no sample of %s: add one", k)
		}
		out = append(out, ev)
	}
	return append(out, eventstest.TapeSample(),
		&events.RecallFailed{FileID: eventstest.FileID(9), Path: "/x", ObjectID: eventstest.ObjectID(9), Reason: "no copy left"})
}

// TestEveryKindHasASchema: the code and the published contract list the same
// event types.
func TestEveryKindHasASchema(t *testing.T) {
	var kinds []string
	for _, k := range events.Kinds() {
		kinds = append(kinds, k.Type())
	}
	got := schemas.Types()
	if strings.Join(sortCopy(kinds), ",") != strings.Join(got, ",") {
		t.Fatalf("event kinds %v\nschemas     %v", sortCopy(kinds), got)
	}
}

// TestSchemasMatchGoTypes: every schema's properties are exactly the JSON
// fields of the Go type, and its required list is exactly the fields without
// omitempty.
func TestSchemasMatchGoTypes(t *testing.T) {
	for _, k := range events.Kinds() {
		b, err := schemas.FS().(interface{ ReadFile(string) ([]byte, error) }).ReadFile(k.Type() + ".json")
		if err != nil {
			t.Fatal(err)
		}
		var s schemaDoc
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		compareSchema(t, k.Type(), s, reflect.TypeOf(events.NewEvent(k)).Elem())
	}
}

type schemaDoc struct {
	Properties map[string]schemaDoc `json:"properties"`
	Required   []string             `json:"required"`
	Type       string               `json:"type"`
}

func compareSchema(t *testing.T, where string, s schemaDoc, typ reflect.Type) {
	t.Helper()
	fields := map[string]bool{} // name -> required
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tag := f.Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		fields[name] = opts != "omitempty"
		sub, ok := s.Properties[name]
		if !ok {
			t.Errorf("%s: Go field %s (%q) missing from schema", where, f.Name, name)
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			compareSchema(t, where+"."+name, sub, ft)
		}
	}
	for name := range s.Properties {
		if _, ok := fields[name]; !ok {
			t.Errorf("%s: schema property %q has no Go field", where, name)
		}
	}
	var req []string
	for name, r := range fields {
		if r {
			req = append(req, name)
		}
	}
	if strings.Join(sortCopy(req), ",") != strings.Join(sortCopy(s.Required), ",") {
		t.Errorf("%s: required %v, Go non-omitempty fields %v", where, sortCopy(s.Required), sortCopy(req))
	}
}

// TestPublishedEventsValidate: every event the code can publish validates
// against its schema with a real JSON Schema validator, and round-trips.
func TestPublishedEventsValidate(t *testing.T) {
	v := validator(t)
	for i, ev := range samples(t) {
		env := eventstest.Envelope(ev, i)
		raw, err := events.Encode(env)
		if err != nil {
			t.Fatalf("%s: encode: %v", ev.Kind(), err)
		}
		if err := v.Validate(raw); err != nil {
			t.Errorf("%s: schema rejects a valid event: %v\n%s", ev.Kind(), err, raw)
		}
		env2, ev2, err := events.Decode(raw)
		if err != nil {
			t.Fatalf("%s: decode: %v", ev.Kind(), err)
		}
		if !reflect.DeepEqual(ev, ev2) {
			t.Errorf("%s: round trip\n got %#v\nwant %#v", ev.Kind(), ev2, ev)
		}
		if env2.ID != env.ID || env2.Type != ev.Kind().Type() || env2.Subject != ev.Entity() || !env2.Time.Equal(env.Time) {
			t.Errorf("%s: envelope round trip: %+v", ev.Kind(), env2)
		}
		subj, err := events.SubjectOf("nas1", env)
		if err != nil || subj != "strata.nas1."+ev.Kind().Aggregate+"."+ev.Kind().Name {
			t.Errorf("%s: subject %q, %v", ev.Kind(), subj, err)
		}
	}
}

// TestInvalidEventsRejected: the Go validation and the schema agree on bad
// payloads; neither lets them through.
func TestInvalidEventsRejected(t *testing.T) {
	v := validator(t)
	bad := map[string]events.Event{
		"short file id":   &events.FileDeleted{FileID: "abc", Path: "/x"},
		"upper-case hex":  &events.FileDeleted{FileID: strings.ToUpper(eventstest.FileID(0xabc)), Path: "/x"},
		"relative path":   &events.FileDeleted{FileID: eventstest.FileID(1), Path: "x/y"},
		"bad object id":   &events.ObjectVerified{ObjectID: "zz", Tier: "hdd"},
		"bad tier name":   &events.ObjectVerified{ObjectID: eventstest.ObjectID(1), Tier: "a.b"},
		"unknown reason":  &events.FileSelected{FileID: eventstest.FileID(1), Path: "/h/x", Root: "/h", Stat: eventstest.Stat(1), Reason: "whim"},
		"negative offset": &events.RecallRequested{FileID: eventstest.FileID(1), Path: "/x", ObjectID: eventstest.ObjectID(1), Offset: -1, Reason: events.RecallAccess},
		"empty reason":    &events.ObjectCorrupt{ObjectID: eventstest.ObjectID(1), Tier: "hdd"},
		"negative size":   &events.FileModified{FileID: eventstest.FileID(1), Path: "/x", ObjectID: eventstest.ObjectID(1), Stat: events.FileStat{Size: -1, Inode: 3}},
	}
	for name, ev := range bad {
		if err := ev.Validate(); err == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
		if _, err := events.New("id", "/s", time.Now(), ev); !errors.Is(err, events.ErrInvalid) {
			t.Errorf("%s: New: %v, want ErrInvalid", name, err)
		}
		data, _ := json.Marshal(ev)
		if err := v.ValidateData(ev.Kind().Type(), data); err == nil {
			t.Errorf("%s: schema accepted %s", name, data)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	good, _ := events.Encode(eventstest.Envelope(eventstest.Sample(events.KindFileDeleted), 1))
	for name, tc := range map[string]struct {
		raw  string
		want error
	}{
		"not json":          {`{"specversion":`, events.ErrMalformed},
		"array":             {`[]`, events.ErrMalformed},
		"wrong specversion": {strings.Replace(string(good), `"1.0"`, `"0.3"`, 1), events.ErrMalformed},
		"unknown type":      {strings.Replace(string(good), "file.deleted", "file.eaten", 1), events.ErrUnknownType},
		"data not object":   {`{"specversion":"1.0","id":"1","source":"/s","type":"strata.file.deleted.v1","time":"2024-01-01T00:00:00Z","datacontenttype":"application/json","data":3}`, events.ErrMalformed},
		"invalid data":      {`{"specversion":"1.0","id":"1","source":"/s","type":"strata.file.deleted.v1","time":"2024-01-01T00:00:00Z","datacontenttype":"application/json","data":{"file_id":"x","path":"/a"}}`, events.ErrInvalid},
		"trailing data":     {`{"specversion":"1.0","id":"1","source":"/s","type":"strata.file.deleted.v1","time":"2024-01-01T00:00:00Z","datacontenttype":"application/json","data":{"file_id":"` + eventstest.FileID(1) + `","path":"/a"}} x`, events.ErrMalformed},
		"missing time":      {`{"specversion":"1.0","id":"1","source":"/s","type":"strata.file.deleted.v1","datacontenttype":"application/json","data":{"file_id":"` + eventstest.FileID(1) + `","path":"/a"}}`, events.ErrMalformed},
	} {
		if _, _, err := events.Decode([]byte(tc.raw)); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
}

func TestNewIDDeterministic(t *testing.T) {
	a := events.NewID(events.KindFileSelected, "f1", "123")
	if a != events.NewID(events.KindFileSelected, "f1", "123") {
		t.Fatal("same inputs, different ids")
	}
	for _, other := range []string{
		events.NewID(events.KindFileSelected, "f1", "124"),
		events.NewID(events.KindFileSelected, "f11", "23"),
		events.NewID(events.KindFileReleased, "f1", "123"),
	} {
		if other == a {
			t.Fatal("different inputs, same id")
		}
	}
}

func TestSubjects(t *testing.T) {
	if got := events.Subject("nas1", events.KindRecallCompleted); got != "strata.nas1.recall.completed" {
		t.Fatal(got)
	}
	if got := events.AggregateEvents(events.AnyHost, "recall"); got != "strata.*.recall.>" {
		t.Fatal(got)
	}
	host, k, err := events.ParseSubject("strata.nas1.file.release_skipped")
	if err != nil || host != "nas1" || k.Name != "release_skipped" || k.Aggregate != "file" {
		t.Fatal(host, k, err)
	}
	if _, _, err := events.ParseSubject("strata.nas1.file"); err == nil {
		t.Fatal("short subject accepted")
	}
	for in, want := range map[string]string{"strata.nas1.file.selected": "nas1", "strata.*.file.selected": "", "strata.nas1.file": "",
		"strata_dlq.nas1.compressor": "", "strata_ctl.nas1.ls.x": ""} {
		if got := events.SubjectHost(in); got != want {
			t.Errorf("SubjectHost(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"NAS-1.example.com": "nas-1", "a b*c>": "a-b-c-", "": "localhost"} {
		if got := events.HostToken(in); got != want || !events.ValidToken(got) {
			t.Errorf("HostToken(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to an
// event the schema accepts and that decodes to the same payload.
func FuzzDecode(f *testing.F) {
	for i, k := range events.Kinds() {
		raw, err := events.Encode(eventstest.Envelope(eventstest.Sample(k), i))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"specversion":"1.0","data":null}`))
	v := validator(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		env, ev, err := events.Decode(raw)
		if err != nil {
			return
		}
		env2, err := events.New(env.ID, env.Source, env.Time, ev)
		if err != nil {
			t.Fatalf("accepted event does not re-encode: %v", err)
		}
		raw2, err := events.Encode(env2)
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Validate(raw2); err != nil {
			t.Fatalf("Decode accepted an event its schema rejects: %v\n%s", err, raw2)
		}
		_, ev3, err := events.Decode(raw2)
		if err != nil || !reflect.DeepEqual(ev, ev3) {
			t.Fatalf("re-decode: %v\n%#v\n%#v", err, ev, ev3)
		}
	})
}

func sortCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// FuzzDecodeFast: the reflection-free envelope parser agrees with
// encoding/json on everything it accepts.
func FuzzDecodeFast(f *testing.F) {
	for i, k := range events.Kinds() {
		raw, err := events.Encode(eventstest.Envelope(eventstest.Sample(k), i))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte(`{"id":"a","id":"b"}`))
	f.Add([]byte(`{"time":"2024-01-01T00:00:00.5+01:00","data":{"a":["}",{"b":"\""}]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var fast events.Envelope
		if !events.DecodeEnvelopeFast(raw, &fast) {
			return
		}
		var std events.Envelope
		if err := json.Unmarshal(raw, &std); err != nil {
			if json.Valid(fast.Data) {
				t.Fatalf("fast path accepted what encoding/json rejects (%v): %q", err, raw)
			}
			return // invalid data object: DecodeData rejects it
		}
		if !reflect.DeepEqual(fast, std) && !(fast.Time.Equal(std.Time) && fast.ID == std.ID && fast.Type == std.Type &&
			fast.Source == std.Source && fast.Subject == std.Subject && fast.SpecVersion == std.SpecVersion &&
			fast.DataContentType == std.DataContentType && bytes.Equal(fast.Data, std.Data)) {
			t.Fatalf("fast %+v\n std %+v", fast, std)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	raw, err := events.Encode(eventstest.Envelope(eventstest.Sample(events.KindObjectPacked), 1))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, _, err := events.Decode(raw); err != nil {
			b.Fatal(err)
		}
	}
}
