package dir_test

import "os/exec"

func execLook(name string) (string, error) { return exec.LookPath(name) }

func runIn(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	return cmd.CombinedOutput()
}
