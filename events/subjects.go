package events

import (
	"fmt"
	"strings"
)

// Subject layout. Events travel on strata.<host>.<aggregate>.<event>; every
// other subject Strata uses is outside strata.> so that the event stream
// holds events and nothing else.
const (
	// AllEvents matches every event of every host.
	AllEvents = "strata.>"
	// AllDeadLetters matches every dead-letter subject.
	AllDeadLetters = "strata_dlq.>"
	// AllControl matches every control (request/reply) subject.
	AllControl = "strata_ctl.>"

	prefix           = "strata"
	deadLetterPrefix = "strata_dlq"
	controlPrefix    = "strata_ctl"
)

// AnyHost in a filter matches events of every host.
const AnyHost = "*"

// Subject returns the subject an event of kind k from host travels on,
// e.g. strata.nas1.file.released. host may be AnyHost for a filter.
func Subject(host string, k Kind) string {
	return prefix + "." + host + "." + k.Aggregate + "." + k.Name
}

// HostEvents returns a filter for every event of one host (or AnyHost).
func HostEvents(host string) string { return prefix + "." + host + ".>" }

// AggregateEvents returns a filter for every event of one aggregate
// ("file", "object", "recall", …) of host (or AnyHost), e.g.
// strata.*.recall.> for every recall event.
func AggregateEvents(host, aggregate string) string {
	return prefix + "." + host + "." + aggregate + ".>"
}

// ParseSubject splits an event subject into its host and kind. The kind's
// version is not in the subject and is left 0.
func ParseSubject(subject string) (host string, k Kind, err error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 || parts[0] != prefix {
		return "", Kind{}, fmt.Errorf("%w: subject %q is not strata.<host>.<aggregate>.<event>", ErrMalformed, subject)
	}
	return parts[1], Kind{Aggregate: parts[2], Name: parts[3]}, nil
}

// SubjectHost returns the host token of an event subject
// (strata.<host>.<aggregate>.<event>), or "" if subject is not one.
func SubjectHost(subject string) string {
	host, _, err := ParseSubject(subject)
	if err != nil || !ValidToken(host) {
		return ""
	}
	return host
}

// DeadLetterSubject is where stage on host puts messages it cannot process.
func DeadLetterSubject(host, stage string) string {
	return deadLetterPrefix + "." + host + "." + stage
}

// ControlSubject is where the daemon on host answers requests for verb
// (status, ls, archive, …) from the CLI.
func ControlSubject(host, verb string) string {
	return controlPrefix + "." + host + "." + verb
}

// ValidToken reports whether s can be one token of a subject: non-empty,
// only ASCII letters, digits, '-' and '_'.
func ValidToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// HostToken turns a hostname into a subject token: lowercase, with every
// character that is not a letter, digit, '-' or '_' replaced by '-', and
// only the first label of a dotted name.
func HostToken(hostname string) string {
	if i := strings.IndexByte(hostname, '.'); i > 0 {
		hostname = hostname[:i]
	}
	b := []byte(strings.ToLower(hostname))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) == 0 {
		return "localhost"
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}
