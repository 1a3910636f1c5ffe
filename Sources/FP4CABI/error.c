// The thread-local last-error text. C11 _Thread_local gives each calling thread its own
// slot, so an error in one Python thread never shows up in another.
#include <string.h>
#include "fp4swift.h"
#include "fp4swift_error.h"

static _Thread_local char last_error[1024];

const char *fp4swift_last_error(void) { return last_error; }

void fp4swift_internal_set_error(const char *message) {
    strncpy(last_error, message ? message : "", sizeof last_error - 1);
    last_error[sizeof last_error - 1] = '\0';
}
