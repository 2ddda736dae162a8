package pipeline

import (
	"errors"
	"fmt"
	"strings"
)

// ConfigError names the configuration key that is wrong and why. Every
// package that validates a configuration returns it, naming the key as
// strata.toml spells it relative to the package's section ("min_age",
// "endpoint"); the caller that knows the section prefixes it with Within
// ("policy.min_age", "tier[0].endpoint"). Keys of settings that have no
// TOML key are named after their Go field in lower case.
type ConfigError struct {
	Key   string
	Value any // the bad value; nil when not useful
	Err   error
}

// BadConfig returns a *ConfigError for key and value.
func BadConfig(key string, value any, format string, args ...any) error {
	return &ConfigError{Key: key, Value: value, Err: fmt.Errorf(format, args...)}
}

func (e *ConfigError) Error() string {
	switch v := e.Value.(type) {
	case nil:
		return fmt.Sprintf("config: %s: %v", e.Key, e.Err)
	case string:
		return fmt.Sprintf("config: %s: %q: %v", e.Key, v, e.Err)
	default:
		return fmt.Sprintf("config: %s: %v: %v", e.Key, v, e.Err)
	}
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Within prefixes the key of every *ConfigError in err (a joined error
// too) with section: Within("policy", min_age) is policy.min_age,
// Within("tier[0]", endpoint) tier[0].endpoint, and an index key
// ("[2]") is appended without a dot. Other errors are returned as they
// are.
func Within(section string, err error) error {
	if err == nil || section == "" {
		return err
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Within(section, e))
		}
		return errors.Join(out...)
	}
	var ce *ConfigError
	if !errors.As(err, &ce) {
		return err
	}
	key := section + "." + ce.Key
	if strings.HasPrefix(ce.Key, "[") {
		key = section + ce.Key
	}
	return &ConfigError{Key: key, Value: ce.Value, Err: ce.Err}
}

// NewConfigError returns a *ConfigError for key, value and err.
func NewConfigError(key string, value any, err error) error {
	return &ConfigError{Key: key, Value: value, Err: err}
}
