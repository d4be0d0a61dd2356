// Package readmecheck holds the README's code snippets, so that the
// compiler checks them: when an API changes, the build fails here until
// the README is updated too.
package readmecheck
