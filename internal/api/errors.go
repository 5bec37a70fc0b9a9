package api

import (
	"net/http"

	"github.com/banger/banger/internal/errdefs"
)

// HTTPStatus maps an error code (package errdefs) to an HTTP status.
func HTTPStatus(code string) int {
	switch code {
	case errdefs.CodeNotFound:
		return http.StatusNotFound
	case errdefs.CodeInvalid:
		return http.StatusBadRequest
	case errdefs.CodeConflict:
		return http.StatusConflict
	case errdefs.CodeUnavailable:
		return http.StatusServiceUnavailable
	case errdefs.CodeTimeout:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}
