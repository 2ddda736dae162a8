// Package kernelguard is a placeholder; see README.md.
package kernelguard
