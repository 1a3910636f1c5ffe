/* Internal to the library: the thread-local last-error slot behind fp4swift_last_error(). */
#ifndef FP4SWIFT_ERROR_H
#define FP4SWIFT_ERROR_H
void fp4swift_internal_set_error(const char *message);
#endif
