// Package ui is the host UI's Updates page, embedded in the agent so it
// works on a host with no network beyond itself: index.html and the
// assets/ it loads (plain HTML, CSS and JavaScript, no framework, nothing
// fetched from elsewhere). The REST facade (package api) serves it at / and
// /assets/; the page drives the update routes under /api/v1/updates and
// follows the server-sent event stream, polling the status when the stream
// fails.
//
// The facade's Content-Security-Policy is default-src 'self', so the page
// has no inline script, style or event handler; ui_test.go holds it to that.
package ui

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// FS is the page: index.html at its root and its files under assets/.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// "static" is a constant embedded directory: this cannot fail.
		panic(err)
	}
	return sub
}
