/* gae_sandbox._speedups: the optional C accelerator of the host-code fast path.
 *
 * Host code (no sandbox active) pays for every replaced function and for the audit hook on
 * every audited operation. In Python each costs a frame; here it costs one ContextVar read:
 *
 * - Guard(original, checked, var): a callable that calls `original` directly when `var`
 *   holds None (host code) and the Python `checked` function otherwise. `checked` reads the
 *   ContextVar again and does every check, so this is only a shortcut for host code. The
 *   original is never exposed: no attribute names it, pickling goes by qualified name (as a
 *   function's does), and only the garbage collector's traversal sees it.
 * - install_audit_hook(hook, var, passed): PySys_AddAuditHook with a C hook that returns at
 *   once when `var` holds None (or in another interpreter) or the event is in `passed`, and
 *   calls `hook(event, args)` otherwise.
 *
 * The pure-Python code in patches.py and audit.py does the same and is used when this module
 * does not build or import, or when GAE_SANDBOX_PURE_PYTHON=1.
 *
 * CPython 3.10+ (PyObject_Vectorcall and Py_TPFLAGS_HAVE_VECTORCALL are public since 3.9,
 * PyContextVar_Get since 3.7, PySys_AddAuditHook since 3.8).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>  /* offsetof */
#include <string.h>  /* strcmp */

/* --- Guard ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *original;   /* called for host code; never exposed */
    PyObject *checked;    /* the Python wrapper: called when a scope is active */
    PyObject *var;        /* the ContextVar of the active scope */
    PyObject *dict;       /* __name__, __qualname__, __doc__, __module__, as a function's */
    PyObject *weakrefs;   /* weak references work as they do to a function */
    vectorcallfunc vectorcall;
} GuardObject;

/* thread ident -> the ticket of the scope that thread runs (context.py's _thread_tickets):
 * a thread running a scope's code is sandboxed even where its context carries no ticket */
static PyObject *thread_tickets = NULL;
/* the variable's value for host code called from inside a scope (context.py's _HOST) */
static PyObject *host_ticket = NULL;
/* hash(ticket) -> its Scope (context.py's _scopes), and the tickets' exact type */
static PyObject *scopes = NULL;
static PyObject *ticket_type = NULL;
static PyObject *known_imports_name = NULL;  /* "known_imports" */
static PyObject *spec_name_key = NULL;       /* "name" */

/* 1: the current thread is marked as running a scope; 0: not; -1: error */
static PyObject *thread_mark(void);

static PyObject *scope_of(PyObject *ticket);

/* 1: host code (no ticket in the context, none on the thread); 0: sandboxed; -1: error.
 * With `scope`, a sandboxed answer also gives the Scope that governs here when
 * context.active_scope() finds it without nesting (the context's ticket on an unmarked
 * thread or one marked with it, or the mark where the context has none), as a new
 * reference, or NULL for the Python code to decide (a nested scope, an unknown value). */
static int
classify(PyObject *var, PyObject **scope)
{
    PyObject *ticket;
    if (PyContextVar_Get(var, NULL, &ticket) < 0) {
        return -1;
    }
    /* the ContextVar has a default (None), so ticket is never NULL; be safe anyway */
    if (ticket != NULL && ticket == host_ticket) {
        Py_DECREF(ticket);
        return 1;
    }
    int empty = (ticket == NULL || ticket == Py_None);
    if (!empty && scope == NULL) {
        Py_DECREF(ticket);
        return 0;
    }
    PyObject *mark = thread_mark();  /* borrowed */
    if (mark == NULL && PyErr_Occurred()) {
        Py_XDECREF(ticket);
        return -1;
    }
    if (mark == Py_None) {
        mark = NULL;
    }
    if (empty && mark == NULL) {
        Py_XDECREF(ticket);
        return 1;
    }
    if (scope != NULL) {
        *scope = scope_of(empty ? mark : (mark == NULL || mark == ticket ? ticket : NULL));
    }
    Py_XDECREF(ticket);
    return 0;
}

static int
is_host(PyObject *var)
{
    return classify(var, NULL);
}

static PyObject *
watch_threads(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *tickets, *host, *scope_map, *type;
    if (!PyArg_ParseTuple(args, "OOOO:watch_threads", &tickets, &host, &scope_map, &type)) {
        return NULL;
    }
    if (!PyDict_CheckExact(tickets) || !PyDict_CheckExact(scope_map) || !PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError,
                        "watch_threads(tickets, host, scopes, ticket_type): two dicts, a value "
                        "and a type");
        return NULL;
    }
    if (thread_tickets != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "watch_threads: already set for this process");
        return NULL;
    }
    Py_INCREF(tickets);
    thread_tickets = tickets;
    Py_INCREF(host);
    host_ticket = host;
    Py_INCREF(scope_map);
    scopes = scope_map;
    Py_INCREF(type);
    ticket_type = type;
    Py_RETURN_NONE;
}

/* hash(ticket) -> Scope for an exact ticket (new reference), else NULL with no error set */
static PyObject *
scope_of(PyObject *ticket)
{
    if (ticket == NULL || scopes == NULL || (PyObject *)Py_TYPE(ticket) != ticket_type) {
        return NULL;
    }
    Py_hash_t hash = PyObject_Hash(ticket);
    PyObject *key = hash == -1 ? NULL : PyLong_FromSsize_t(hash);
    PyObject *scope = NULL;
    if (key != NULL) {
        scope = PyDict_GetItemWithError(scopes, key);  /* borrowed */
        Py_XINCREF(scope);
        Py_DECREF(key);
    }
    PyErr_Clear();
    return scope;
}

/* The thread's mark (borrowed; NULL: none, or an error is set) */
static PyObject *
thread_mark(void)
{
    if (thread_tickets == NULL || PyDict_GET_SIZE(thread_tickets) == 0) {
        return NULL;
    }
    PyObject *ident = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (ident == NULL) {
        return NULL;
    }
    PyObject *mark = PyDict_GetItemWithError(thread_tickets, ident);  /* borrowed */
    Py_DECREF(ident);
    return mark;
}

static PyObject *
guard_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    GuardObject *self = (GuardObject *)callable;
    if (self->var == NULL) {  /* cleared by the collector (a cycle being freed) */
        PyErr_SetString(PyExc_RuntimeError, "gae_sandbox guard used after it was cleared");
        return NULL;
    }
    int host = is_host(self->var);
    if (host < 0) {
        return NULL;
    }
    /* nargsf passes on PY_VECTORCALL_ARGUMENTS_OFFSET: the arguments are the caller's own */
    return PyObject_Vectorcall(host ? self->original : self->checked, args, nargsf, kwnames);
}

/* A new Guard (or StatGuard) of `type` holding the three objects, called through `call` */
static GuardObject *
guard_alloc(PyTypeObject *type, PyObject *original, PyObject *checked, PyObject *var,
            vectorcallfunc call)
{
    GuardObject *self = (GuardObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(original);
    self->original = original;
    Py_INCREF(checked);
    self->checked = checked;
    Py_INCREF(var);
    self->var = var;
    self->dict = NULL;
    self->weakrefs = NULL;
    self->vectorcall = call;
    return self;
}

static PyObject *
guard_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *original, *checked, *var;
    static char *keywords[] = {"original", "checked", "var", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:Guard", keywords,
                                     &original, &checked, &var)) {
        return NULL;
    }
    if (!PyCallable_Check(original) || !PyCallable_Check(checked)) {
        PyErr_SetString(PyExc_TypeError, "Guard: original and checked must be callable");
        return NULL;
    }
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "Guard: var must be a contextvars.ContextVar");
        return NULL;
    }
    return (PyObject *)guard_alloc(type, original, checked, var, guard_vectorcall);
}

static int
guard_traverse(GuardObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->checked);
    Py_VISIT(self->var);
    Py_VISIT(self->dict);
    return 0;
}

static int
guard_clear(GuardObject *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->checked);
    Py_CLEAR(self->var);
    Py_CLEAR(self->dict);
    return 0;
}

static void
guard_dealloc(GuardObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Py_TYPE(self)->tp_clear((PyObject *)self);  /* StatGuard's clears its own fields too */
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* As a class attribute (socket.socket.listen), bind like a function does. */
static PyObject *
guard_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

/* The name as set by patches._named (the original's), else the type's. */
static PyObject *
guard_name(GuardObject *self, const char *attribute)
{
    if (self->dict != NULL) {
        PyObject *name = PyDict_GetItemString(self->dict, attribute);  /* borrowed */
        if (name != NULL && PyUnicode_Check(name)) {
            Py_INCREF(name);
            return name;
        }
    }
    return NULL;
}

static PyObject *
guard_repr(GuardObject *self)
{
    PyObject *name = guard_name(self, "__qualname__");
    if (name == NULL) {
        name = guard_name(self, "__name__");
    }
    if (name == NULL) {
        return PyUnicode_FromFormat("<gae_sandbox guard at %p>", self);
    }
    PyObject *repr = PyUnicode_FromFormat("<gae_sandbox guard of %U at %p>", name, self);
    Py_DECREF(name);
    return repr;
}

/* Pickled by qualified name, as a function is (the name leads back to this very object);
 * never by its contents. */
static PyObject *
guard_reduce(GuardObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *name = guard_name(self, "__qualname__");
    if (name == NULL) {
        name = guard_name(self, "__name__");
    }
    if (name == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot pickle an unnamed gae_sandbox guard");
    }
    return name;
}

/* inspect.signature() answers with the Python wrapper's signature, as it does for the
 * pure-Python code. Only inspect asks, so it is in sys.modules; None lets inspect go on. */
static PyObject *
guard_signature(GuardObject *self, void *Py_UNUSED(closure))
{
    PyObject *name = PyUnicode_FromString("inspect");
    if (name == NULL) {
        return NULL;
    }
    PyObject *inspect = PyImport_GetModule(name);
    Py_DECREF(name);
    PyObject *signature = NULL;
    if (inspect != NULL && self->checked != NULL) {
        signature = PyObject_CallMethod(inspect, "signature", "O", self->checked);
    }
    Py_XDECREF(inspect);
    if (signature == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return signature;
}

static PyMethodDef guard_methods[] = {
    {"__reduce__", (PyCFunction)guard_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef guard_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {"__signature__", (getter)guard_signature, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject GuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gae_sandbox._speedups.Guard",
    .tp_doc = PyDoc_STR("Guard(original, checked, var): calls original when var holds None "
                        "(host code), else checked."),
    .tp_basicsize = sizeof(GuardObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = guard_new,
    .tp_dealloc = (destructor)guard_dealloc,
    .tp_traverse = (traverseproc)guard_traverse,
    .tp_clear = (inquiry)guard_clear,
    .tp_vectorcall_offset = offsetof(GuardObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = guard_descr_get,
    .tp_repr = (reprfunc)guard_repr,
    .tp_dictoffset = offsetof(GuardObject, dict),
    .tp_weaklistoffset = offsetof(GuardObject, weakrefs),
    .tp_methods = guard_methods,
    .tp_getset = guard_getset,
};

/* --- StatGuard: os.stat / os.lstat with the sandboxed fast path in C --------------------- */

/* A Guard whose sandboxed call first tries the answer filesystem.py's checked stat gives
 * for a path walked before: an exact absolute str with a cached resolution
 * (filesystem._RESOLVED: path -> (resolved, direct, st_dev, st_ino, st_mode, st_ctime_ns)),
 * a resolved path every layer of the governing scope already allows (Layer.readable), and
 * one stat of the path now (lstat when no symlink was on the way) naming that very file:
 * that stat is the answer. Anything else (a relative path, keywords, a miss, a changed
 * file, a nested scope) calls the Python wrapper, which walks, judges and refreshes. */
typedef struct {
    GuardObject guard;
    PyObject *resolved;   /* filesystem._RESOLVED */
    PyObject *lstat;      /* the original os.lstat */
    PyObject *stat;       /* the original os.stat */
    int follow;           /* 1: os.stat; 0: os.lstat (answered here only for direct paths) */
} StatGuardObject;

static PyObject *layers_name, *readable_name, *st_dev_name, *st_ino_name, *st_mode_name,
    *st_ctime_ns_name;

/* 1: every layer of scope has `resolved` in its readable set; 0: not (or an odd value) */
static int
all_layers_allow(PyObject *scope, PyObject *resolved)
{
    PyObject *layers = PyObject_GetAttr(scope, layers_name);
    if (layers == NULL) {
        PyErr_Clear();
        return 0;
    }
    int allowed = PyTuple_CheckExact(layers) && PyTuple_GET_SIZE(layers) > 0;
    for (Py_ssize_t i = 0; allowed && i < PyTuple_GET_SIZE(layers); i++) {
        PyObject *readable = PyObject_GetAttr(PyTuple_GET_ITEM(layers, i), readable_name);
        allowed = readable != NULL && PySet_CheckExact(readable)
                  && PySet_Contains(readable, resolved) == 1;
        Py_XDECREF(readable);
    }
    Py_DECREF(layers);
    PyErr_Clear();
    return allowed;
}

/* 1: stat result `now` has the identity recorded in `entry` items 2-5 */
static int
same_file(PyObject *now, PyObject *entry)
{
    PyObject *names[4] = {st_dev_name, st_ino_name, st_mode_name, st_ctime_ns_name};
    for (int i = 0; i < 4; i++) {
        PyObject *value = PyObject_GetAttr(now, names[i]);
        int equal = value != NULL
                    && PyObject_RichCompareBool(value, PyTuple_GET_ITEM(entry, i + 2), Py_EQ) == 1;
        Py_XDECREF(value);
        if (!equal) {
            PyErr_Clear();
            return 0;
        }
    }
    return 1;
}

/* The answer for a walked path, or NULL with no error set (ask Python) */
static PyObject *
cached_stat(StatGuardObject *self, PyObject *scope, PyObject *path)
{
    if (!PyUnicode_CheckExact(path) || PyUnicode_GET_LENGTH(path) == 0
            || PyUnicode_READ_CHAR(path, 0) != '/' || !PyDict_CheckExact(self->resolved)) {
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(self->resolved, path);  /* borrowed */
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 6) {
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(entry);
    PyObject *resolved = PyTuple_GET_ITEM(entry, 0);
    int direct = PyTuple_GET_ITEM(entry, 1) == Py_True;
    PyObject *now = NULL;
    if ((direct || self->follow) && PyUnicode_CheckExact(resolved)
            && all_layers_allow(scope, resolved)) {
        now = PyObject_CallOneArg(direct ? self->lstat : self->stat, path);
        if (now != NULL && !same_file(now, entry)) {
            Py_CLEAR(now);
        }
        PyErr_Clear();
    }
    Py_DECREF(entry);
    return now;
}

static PyObject *
stat_guard_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    StatGuardObject *self = (StatGuardObject *)callable;
    if (self->guard.var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gae_sandbox guard used after it was cleared");
        return NULL;
    }
    PyObject *scope = NULL;
    int host = classify(self->guard.var, &scope);
    if (host < 0) {
        return NULL;
    }
    if (host) {
        return PyObject_Vectorcall(self->guard.original, args, nargsf, kwnames);
    }
    if (scope != NULL && PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL) {
        PyObject *answer = cached_stat(self, scope, args[0]);
        if (answer != NULL) {
            Py_DECREF(scope);
            return answer;
        }
    }
    Py_XDECREF(scope);
    return PyObject_Vectorcall(self->guard.checked, args, nargsf, kwnames);
}

static PyObject *
stat_guard_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *original, *checked, *var, *resolved, *lstat, *stat;
    int follow;
    static char *keywords[] = {"original", "checked", "var", "resolved", "lstat", "stat",
                               "follow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO!OOp:StatGuard", keywords,
                                     &original, &checked, &var, &PyDict_Type, &resolved,
                                     &lstat, &stat, &follow)) {
        return NULL;
    }
    if (!PyCallable_Check(original) || !PyCallable_Check(checked) || !PyCallable_Check(lstat)
            || !PyCallable_Check(stat) || !PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError,
                        "StatGuard: four callables, a ContextVar and a dict");
        return NULL;
    }
    StatGuardObject *self = (StatGuardObject *)guard_alloc(type, original, checked, var,
                                                           stat_guard_vectorcall);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(resolved);
    self->resolved = resolved;
    Py_INCREF(lstat);
    self->lstat = lstat;
    Py_INCREF(stat);
    self->stat = stat;
    self->follow = follow;
    return (PyObject *)self;
}

static int
stat_guard_traverse(StatGuardObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->resolved);
    Py_VISIT(self->lstat);
    Py_VISIT(self->stat);
    return guard_traverse(&self->guard, visit, arg);
}

static int
stat_guard_clear(StatGuardObject *self)
{
    Py_CLEAR(self->resolved);
    Py_CLEAR(self->lstat);
    Py_CLEAR(self->stat);
    return guard_clear(&self->guard);
}

static PyTypeObject StatGuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gae_sandbox._speedups.StatGuard",
    .tp_doc = PyDoc_STR("StatGuard(original, checked, var, resolved, lstat, stat, follow): a "
                        "Guard for os.stat/os.lstat that answers a walked path in C."),
    .tp_basicsize = sizeof(StatGuardObject),
    .tp_base = &GuardType,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = stat_guard_new,
    .tp_dealloc = (destructor)guard_dealloc,
    .tp_traverse = (traverseproc)stat_guard_traverse,
    .tp_clear = (inquiry)stat_guard_clear,
    .tp_vectorcall_offset = offsetof(StatGuardObject, guard.vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = guard_descr_get,
    .tp_repr = (reprfunc)guard_repr,
    .tp_dictoffset = offsetof(StatGuardObject, guard.dict),
    .tp_weaklistoffset = offsetof(StatGuardObject, guard.weakrefs),
};

/* --- the audit hook ---------------------------------------------------------------------- */

/* Set once (audit hooks cannot be removed); the references are kept for the process's life. */
static PyObject *hook_function = NULL;
/* The descriptor OpenGuard is handing to io.open on this thread (-1: none), and the Scope
 * it opened it for (borrowed: OpenGuard holds it meanwhile): the audit hook lets the "open"
 * event of exactly that number through, on this thread, under exactly that scope, as
 * check_open does in Python for open_file's descriptor (kept in that scope's extras). Code
 * of another scope run meanwhile (a finalizer the collector runs inside io.open, a nested
 * sandbox's) is judged as usual. Set only by OpenGuard, around that one call. */
static _Thread_local int handing_fd = -1;
static _Thread_local PyObject *handing_scope = NULL;
static PyObject *hook_var = NULL;
static PyObject *hook_passed = NULL;  /* frozenset of events needing no decision, or NULL */
static PyInterpreterState *hook_interpreter = NULL;

static int
audit_hook(const char *event, PyObject *args, void *Py_UNUSED(data))
{
    /* C hooks are process-wide; the Python hook was the main interpreter's only, and the
     * objects below belong to it */
    if (PyInterpreterState_Get() != hook_interpreter) {
        return 0;
    }
    int host = is_host(hook_var);
    if (host != 0) {
        return host < 0 ? -1 : 0;  /* 1: host code */
    }
    PyObject *name = PyUnicode_FromString(event);
    if (name == NULL) {
        return -1;
    }
    if (hook_passed != NULL) {
        /* an event the sandbox allows with no decision of its own: the Python hook would
         * only return (and its frame is most of a fresh import's audit cost) */
        int passed = PySet_Contains(hook_passed, name);
        if (passed != 0) {
            Py_DECREF(name);
            return passed < 0 ? -1 : 0;
        }
    }
    PyObject *scope = NULL;
    if (classify(hook_var, &scope) < 0) {
        Py_DECREF(name);
        return -1;
    }
    if (handing_fd >= 0 && scope != NULL && scope == handing_scope
            && strcmp(event, "open") == 0 && PyTuple_GET_SIZE(args) > 0
            && PyLong_CheckExact(PyTuple_GET_ITEM(args, 0))) {
        int overflow = 0;
        long number = PyLong_AsLongAndOverflow(PyTuple_GET_ITEM(args, 0), &overflow);
        if (!overflow && number == handing_fd) {
            Py_DECREF(name);
            Py_DECREF(scope);
            return 0;
        }
        PyErr_Clear();
    }
    /* the governing Scope where classify found it without nesting: the Python hook then
     * skips its own lookup (hook(event, args, scope)); else it looks (hook(event, args)) */
    PyObject *call_args[3] = {name, args, scope};
    PyObject *result = PyObject_Vectorcall(hook_function, call_args, scope ? 3 : 2, NULL);
    Py_DECREF(name);
    Py_XDECREF(scope);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyObject *
install_audit_hook(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *function, *var, *passed = NULL;
    if (!PyArg_ParseTuple(args, "OO|O:install_audit_hook", &function, &var, &passed)) {
        return NULL;
    }
    if (hook_function != NULL) {
        Py_RETURN_FALSE;  /* once per process: hooks cannot be removed */
    }
    if (!PyCallable_Check(function) || !PyContextVar_CheckExact(var)
            || (passed != NULL && !PyFrozenSet_CheckExact(passed))) {
        PyErr_SetString(PyExc_TypeError, "install_audit_hook(hook, var, passed=None): a "
                        "callable, a ContextVar and a frozenset of event names");
        return NULL;
    }
    Py_INCREF(function);
    Py_INCREF(var);
    Py_XINCREF(passed);
    hook_function = function;
    hook_var = var;
    hook_passed = passed;
    hook_interpreter = PyInterpreterState_Get();
    if (PySys_AddAuditHook(audit_hook, NULL) < 0) {
        /* refused by an existing hook: this one was not added */
        Py_CLEAR(hook_function);
        Py_CLEAR(hook_var);
        Py_CLEAR(hook_passed);
        hook_interpreter = NULL;
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
audit_hook_installed(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(hook_function != NULL);
}

/* --- Attribute: a data descriptor whose host read is the instance's own value ------------- */

/* ModuleSpec._initializing, read by the C import on every import of a cached module: host
 * code gets the instance dict's value (or AttributeError) with no Python call; inside a
 * scope the Python getter decides. Setting and deleting call the Python functions. */
typedef struct {
    PyObject_HEAD
    PyObject *name;      /* the attribute's name: the key in the instance dict */
    PyObject *getter;    /* getter(obj): called when a scope is active */
    PyObject *setter;    /* setter(obj, value) */
    PyObject *deleter;   /* deleter(obj) */
    PyObject *var;       /* the ContextVar of the active scope */
} AttributeObject;

/* Inside a scope, the repeated import of a module the governing scope has already allowed
 * (Scope.known_imports holds the spec's name), the usual case, is answered here with the
 * spec's own value and no Python call; every other case goes to the Python getter (a nested
 * scope, several layers, a module not yet allowed). 1: known; 0: not; no error either way. */
static int
known_import(PyObject *scope, PyObject *dict)
{
    PyObject *known = PyObject_GetAttr(scope, known_imports_name);
    if (known == NULL) {
        PyErr_Clear();
        return 0;
    }
    int found = 0;
    PyObject *name = PyDict_GetItemWithError(dict, spec_name_key);  /* borrowed */
    if (PySet_CheckExact(known) && name != NULL && PyUnicode_CheckExact(name)) {
        found = PySet_Contains(known, name);
    }
    Py_DECREF(known);
    if (found <= 0) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static PyObject *
attribute_get(PyObject *op, PyObject *obj, PyObject *Py_UNUSED(type))
{
    AttributeObject *self = (AttributeObject *)op;
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(op);
        return op;
    }
    PyObject *scope = NULL;
    int host = classify(self->var, &scope);
    if (host < 0) {
        return NULL;
    }
    PyObject *dict = PyObject_GenericGetDict(obj, NULL);
    if (dict == NULL) {
        Py_XDECREF(scope);
        return NULL;
    }
    if (!host) {
        int known = scope != NULL && known_import(scope, dict);
        Py_XDECREF(scope);
        if (!known) {
            Py_DECREF(dict);
            return PyObject_CallOneArg(self->getter, obj);
        }
    }
    PyObject *value = PyDict_GetItemWithError(dict, self->name);  /* borrowed */
    Py_XINCREF(value);
    Py_DECREF(dict);
    if (value == NULL && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_AttributeError, self->name);
    }
    return value;
}

static int
attribute_set(PyObject *op, PyObject *obj, PyObject *value)
{
    AttributeObject *self = (AttributeObject *)op;
    PyObject *result = value == NULL ? PyObject_CallOneArg(self->deleter, obj)
                                     : PyObject_CallFunctionObjArgs(self->setter, obj, value,
                                                                    NULL);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyObject *
attribute_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *name, *getter, *setter, *deleter, *var;
    static char *keywords[] = {"name", "getter", "setter", "deleter", "var", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UOOOO:Attribute", keywords,
                                     &name, &getter, &setter, &deleter, &var)) {
        return NULL;
    }
    if (!PyCallable_Check(getter) || !PyCallable_Check(setter) || !PyCallable_Check(deleter)
            || !PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError,
                        "Attribute: a name, three callables and a ContextVar");
        return NULL;
    }
    AttributeObject *self = (AttributeObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(name);
    self->name = name;
    Py_INCREF(getter);
    self->getter = getter;
    Py_INCREF(setter);
    self->setter = setter;
    Py_INCREF(deleter);
    self->deleter = deleter;
    Py_INCREF(var);
    self->var = var;
    return (PyObject *)self;
}

static int
attribute_traverse(AttributeObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->getter);
    Py_VISIT(self->setter);
    Py_VISIT(self->deleter);
    Py_VISIT(self->var);
    return 0;
}

static int
attribute_clear(AttributeObject *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->getter);
    Py_CLEAR(self->setter);
    Py_CLEAR(self->deleter);
    Py_CLEAR(self->var);
    return 0;
}

static void
attribute_dealloc(AttributeObject *self)
{
    PyObject_GC_UnTrack(self);
    attribute_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject AttributeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gae_sandbox._speedups.Attribute",
    .tp_basicsize = sizeof(AttributeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = PyDoc_STR("Attribute(name, getter, setter, deleter, var): a data descriptor; "
                        "host code reads the instance dict's value, code in a sandbox "
                        "getter(obj)."),
    .tp_new = attribute_new,
    .tp_dealloc = (destructor)attribute_dealloc,
    .tp_traverse = (traverseproc)attribute_traverse,
    .tp_clear = (inquiry)attribute_clear,
    .tp_descr_get = attribute_get,
    .tp_descr_set = attribute_set,
};

/* --- openat2 ----------------------------------------------------------------------------- */

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#define HAVE_OPENAT2_CALL 1
/* 437 in the unified system call table both architectures use (linux/openat2.h may be
 * missing from older headers, so the structure is spelt here) */
#define OPENAT2_NUMBER 437
struct open_how_args {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

/* openat2(dirfd, path, flags, resolve) -> the new descriptor or -errno, the GIL released
 * (filesystem.py's ctypes call, without ctypes' cost per call) */
static PyObject *
openat2_call(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyLong_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])
            || !PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "openat2(dirfd: int, path: bytes, flags: int, "
                                         "resolve: int)");
        return NULL;
    }
    long dirfd = PyLong_AsLong(args[0]);
    unsigned long long flags = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long resolve = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (dirfd < INT_MIN || dirfd > INT_MAX) {
        return PyLong_FromLong(-EBADF);
    }
    const char *path = PyBytes_AS_STRING(args[1]);
    if ((Py_ssize_t)strlen(path) != PyBytes_GET_SIZE(args[1])) {
        return PyLong_FromLong(-EINVAL);  /* an embedded NUL: never a shorter path */
    }
    struct open_how_args how = {flags, 0, resolve};
    long fd;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    fd = syscall(OPENAT2_NUMBER, (int)dirfd, path, &how, sizeof how);
    if (fd < 0) {
        error = errno;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(fd < 0 ? -error : fd);
}

/* --- OpenGuard ---------------------------------------------------------------------------- */

/* A Guard for builtins.open/io.open that also makes, in C, the usual sandboxed read: a
 * path beneath the first readable folder it is spelt under, opened with
 * openat2(folder_fd, rest, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) as
 * filesystem.open_for_reading does, then handed to io.open as a descriptor and named as the
 * app spelt it. Only where Python has said that is the whole rule (Scope.open_roots: one
 * layer hiding nothing, no in-memory files), for the folder descriptors this scope has
 * checked (Scope.extras), with filesystem.RACE_FREE_OPENS still true, and for
 * open(path[, mode]) with a read mode and str/None encoding, errors or newline. Anything
 * else, a failed openat2 included, goes to the Python wrapper, which does it all again and
 * gives the usual answer (the error, the refusal). */
typedef struct {
    GuardObject guard;
    PyObject *globals;   /* filesystem's module dict: RACE_FREE_OPENS, read on each call */
} OpenGuardObject;

static PyObject *open_roots_name, *cwd_name, *extras_name, *roots_key, *race_free_name,
    *raw_name, *buffer_name, *name_attribute, *encoding_name, *errors_name, *newline_name;

#define FAST_RESOLVE (0x08 | 0x02)  /* RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS */

/* 1: a text read mode; 2: a binary one; 0: another mode (or not an exact str) */
static int
read_mode(PyObject *mode)
{
    if (!PyUnicode_CheckExact(mode)) {
        return 0;
    }
    const char *text = PyUnicode_AsUTF8(mode);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (!strcmp(text, "r") || !strcmp(text, "rt") || !strcmp(text, "tr")) {
        return 1;
    }
    return !strcmp(text, "rb") || !strcmp(text, "br") ? 2 : 0;
}

/* 1: the keyword arguments are only encoding/errors/newline, each an exact str or None */
static int
plain_keywords(PyObject *const *values, PyObject *kwnames)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i), *value = values[i];
        if (PyUnicode_Compare(name, encoding_name) != 0
                && PyUnicode_Compare(name, errors_name) != 0
                && PyUnicode_Compare(name, newline_name) != 0) {
            PyErr_Clear();
            return 0;
        }
        if (value != Py_None && !PyUnicode_CheckExact(value)) {
            return 0;
        }
    }
    return 1;
}

/* The descriptor of `text` opened beneath the first readable folder it is spelt under, or
 * -1 (no such folder, an unchecked folder descriptor, or the kernel would not open it) */
static int
open_beneath(PyObject *scope, PyObject *roots, PyObject *text)
{
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(roots); i++) {
        PyObject *root = PyTuple_GET_ITEM(roots, i);
        if (!PyUnicode_CheckExact(root)) {
            return -1;
        }
        Py_ssize_t size = PyUnicode_GET_LENGTH(root);
        if (size == 0 || size > length
                || PyUnicode_Tailmatch(text, root, 0, PY_SSIZE_T_MAX, -1) != 1) {
            PyErr_Clear();
            continue;
        }
        if (!(length == size || PyUnicode_READ_CHAR(text, size) == '/' || size == 1)) {
            continue;
        }
        /* the first folder the path is spelt under decides, as in open_for_reading */
        int fd = -1;
        Py_ssize_t start = size + (size > 1);
        PyObject *rest = start >= length ? PyUnicode_FromString(".")
                                         : PyUnicode_Substring(text, start, length);
        PyObject *encoded = rest == NULL ? NULL : PyUnicode_EncodeFSDefault(rest);
        PyObject *extras = PyObject_GetAttr(scope, extras_name);
        PyObject *checked = extras != NULL && PyDict_CheckExact(extras)
                            ? PyDict_GetItemWithError(extras, roots_key) : NULL;
        PyObject *held = checked != NULL && PyDict_CheckExact(checked)
                         ? PyDict_GetItemWithError(checked, root) : NULL;
        int overflow = 0;
        long root_fd = held != NULL && PyLong_CheckExact(held)
                       ? PyLong_AsLongAndOverflow(held, &overflow) : -1;
        if (encoded != NULL && !overflow && root_fd >= 0 && root_fd <= INT_MAX
                && (Py_ssize_t)strlen(PyBytes_AS_STRING(encoded)) == PyBytes_GET_SIZE(encoded)) {
            struct open_how_args how = {O_RDONLY | O_CLOEXEC, 0, FAST_RESOLVE};
            const char *path = PyBytes_AS_STRING(encoded);
            long opened;
            Py_BEGIN_ALLOW_THREADS
            opened = syscall(OPENAT2_NUMBER, (int)root_fd, path, &how, sizeof how);
            Py_END_ALLOW_THREADS
            fd = opened < 0 || opened > INT_MAX ? -1 : (int)opened;
        }
        Py_XDECREF(extras);
        Py_XDECREF(encoded);
        Py_XDECREF(rest);
        PyErr_Clear();
        return fd;
    }
    return -1;
}

/* The file object, or NULL: with an error set (io.open failed after taking the descriptor)
 * or with none (the Python wrapper answers) */
static PyObject *
fast_open(OpenGuardObject *self, PyObject *scope, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames)
{
    Py_ssize_t keywords = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (hook_function == NULL || nargs < 1 || nargs > 2) {
        return NULL;
    }
    int mode = nargs == 2 ? read_mode(args[1]) : 1;
    if (mode == 0 || (mode == 2 && keywords > 0)
            || (keywords > 0 && !plain_keywords(args + nargs, kwnames))) {
        return NULL;
    }
    PyObject *path = args[0];
    if (!PyUnicode_CheckExact(path)) {
        return NULL;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(path);
    if (length == 0 || PyUnicode_FindChar(path, 0, 0, length, 1) != -1) {
        PyErr_Clear();
        return NULL;
    }
    if (PyDict_GetItemWithError(self->globals, race_free_name) != Py_True) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *roots = PyObject_GetAttr(scope, open_roots_name);
    if (roots == NULL || !PyTuple_CheckExact(roots) || PyTuple_GET_SIZE(roots) == 0) {
        Py_XDECREF(roots);
        PyErr_Clear();
        return NULL;
    }
    PyObject *text = NULL;
    if (PyUnicode_READ_CHAR(path, 0) == '/') {
        Py_INCREF(path);
        text = path;
    }
    else {  /* relative: against the request's working directory, as in_scope_cwd */
        PyObject *cwd = PyObject_GetAttr(scope, cwd_name);
        if (cwd != NULL && PyUnicode_CheckExact(cwd) && PyUnicode_GET_LENGTH(cwd) > 0
                && PyUnicode_READ_CHAR(cwd, 0) == '/') {
            text = PyUnicode_FromFormat("%U/%U", cwd, path);
        }
        Py_XDECREF(cwd);
    }
    int fd = text == NULL ? -1 : open_beneath(scope, roots, text);
    Py_XDECREF(text);
    Py_DECREF(roots);
    PyErr_Clear();
    if (fd < 0) {
        return NULL;
    }
    PyObject *number = PyLong_FromLong(fd);
    if (number == NULL) {
        close(fd);
        return NULL;
    }
    PyObject *call_args[4];
    call_args[0] = number;
    for (Py_ssize_t i = 1; i < nargs + keywords; i++) {
        call_args[i] = args[i];
    }
    int outer = handing_fd;  /* a finalizer run in io.open may open a file too */
    PyObject *outer_scope = handing_scope;
    handing_fd = fd;
    handing_scope = scope;
    PyObject *file = PyObject_Vectorcall(self->guard.original, call_args, nargs, kwnames);
    handing_fd = outer;
    handing_scope = outer_scope;
    Py_DECREF(number);
    if (file == NULL) {
        if (PyErr_ExceptionMatches(PyExc_IsADirectoryError)) {
            /* FileIO refused a folder before taking the descriptor: Python says it again */
            close(fd);
            PyErr_Clear();
        }
        return NULL;  /* otherwise io.open closed the descriptor with the file object */
    }
    /* text -> buffered -> FileIO, named as io.open(path) names it */
    PyObject *raw = NULL;
    if (mode == 2) {
        raw = PyObject_GetAttr(file, raw_name);
    }
    else {
        PyObject *buffer = PyObject_GetAttr(file, buffer_name);
        raw = buffer == NULL ? NULL : PyObject_GetAttr(buffer, raw_name);
        Py_XDECREF(buffer);
    }
    if (raw == NULL || PyObject_SetAttr(raw, name_attribute, path) < 0) {
        Py_XDECREF(raw);
        Py_DECREF(file);
        return NULL;
    }
    Py_DECREF(raw);
    return file;
}

static PyObject *
open_guard_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    OpenGuardObject *self = (OpenGuardObject *)callable;
    if (self->guard.var == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gae_sandbox guard used after it was cleared");
        return NULL;
    }
    PyObject *scope = NULL;
    int host = classify(self->guard.var, &scope);
    if (host < 0) {
        return NULL;
    }
    if (host) {
        return PyObject_Vectorcall(self->guard.original, args, nargsf, kwnames);
    }
    if (scope != NULL) {
        PyObject *file = fast_open(self, scope, args, PyVectorcall_NARGS(nargsf), kwnames);
        Py_DECREF(scope);
        if (file != NULL || PyErr_Occurred()) {
            return file;
        }
    }
    return PyObject_Vectorcall(self->guard.checked, args, nargsf, kwnames);
}

static PyObject *
open_guard_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *original, *checked, *var, *globals;
    static char *keywords[] = {"original", "checked", "var", "globals", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO!:OpenGuard", keywords, &original,
                                     &checked, &var, &PyDict_Type, &globals)) {
        return NULL;
    }
    if (!PyCallable_Check(original) || !PyCallable_Check(checked)
            || !PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "OpenGuard: two callables, a ContextVar and a dict");
        return NULL;
    }
    OpenGuardObject *self = (OpenGuardObject *)guard_alloc(type, original, checked, var,
                                                           open_guard_vectorcall);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(globals);
    self->globals = globals;
    return (PyObject *)self;
}

static int
open_guard_traverse(OpenGuardObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->globals);
    return guard_traverse(&self->guard, visit, arg);
}

static int
open_guard_clear(OpenGuardObject *self)
{
    Py_CLEAR(self->globals);
    return guard_clear(&self->guard);
}

static PyTypeObject OpenGuardType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gae_sandbox._speedups.OpenGuard",
    .tp_doc = PyDoc_STR("OpenGuard(original, checked, var, globals): a Guard for open() that "
                        "makes the usual sandboxed read in C."),
    .tp_basicsize = sizeof(OpenGuardObject),
    .tp_base = &GuardType,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_new = open_guard_new,
    .tp_dealloc = (destructor)guard_dealloc,
    .tp_traverse = (traverseproc)open_guard_traverse,
    .tp_clear = (inquiry)open_guard_clear,
    .tp_vectorcall_offset = offsetof(OpenGuardObject, guard.vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = guard_descr_get,
    .tp_repr = (reprfunc)guard_repr,
    .tp_dictoffset = offsetof(OpenGuardObject, guard.dict),
    .tp_weaklistoffset = offsetof(OpenGuardObject, guard.weakrefs),
};
#endif

/* --- same_items --------------------------------------------------------------------------- */

/* same_items(a, b, c, d, ...): whether each list holds exactly the objects of the list after
 * it, compared by identity (never an item's __eq__, which may be app code); a value that is
 * not a list counts as a change (imports.HostImports, on every scope's start and end) */
static PyObject *
same_items(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs % 2 != 0) {
        PyErr_SetString(PyExc_TypeError, "same_items(list, seen, ...): pairs of lists");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i += 2) {
        PyObject *now = args[i], *seen = args[i + 1];
        if (!PyList_Check(now) || !PyList_Check(seen)
                || PyList_GET_SIZE(now) != PyList_GET_SIZE(seen)) {
            Py_RETURN_FALSE;
        }
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(now); j++) {
            if (PyList_GET_ITEM(now, j) != PyList_GET_ITEM(seen, j)) {
                Py_RETURN_FALSE;
            }
        }
    }
    Py_RETURN_TRUE;
}

/* --- the module -------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"install_audit_hook", install_audit_hook, METH_VARARGS,
     PyDoc_STR("install_audit_hook(hook, var, passed=None): add, once per process, an "
               "audit hook that calls hook(event, args) only while var holds something other "
               "than None or the thread is marked (watch_threads), and the event is not in the "
               "frozenset passed. "
               "Returns whether it added it (False: it was there already).")},
    {"watch_threads", watch_threads, METH_VARARGS,
     PyDoc_STR("watch_threads(tickets, host, scopes, ticket_type): once per process, the "
               "dict of thread ident -> ticket that marks a thread as sandboxed where its "
               "context has no ticket, the value that means host code whatever the thread, "
               "and the dict of hash(ticket) -> Scope with the tickets' type (read by "
               "Attribute to answer a repeated allowed import in C).")},
    {"audit_hook_installed", audit_hook_installed, METH_NOARGS,
     PyDoc_STR("Whether install_audit_hook has added the hook.")},
    {"same_items", (PyCFunction)(void (*)(void))same_items, METH_FASTCALL,
     PyDoc_STR("same_items(list, seen, ...): whether each list holds exactly the objects of "
               "the one after it (by identity).")},
#ifdef HAVE_OPENAT2_CALL
    {"openat2", (PyCFunction)(void (*)(void))openat2_call, METH_FASTCALL,
     PyDoc_STR("openat2(dirfd, path, flags, resolve): the new descriptor, or -errno.")},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gae_sandbox._speedups",
    .m_doc = PyDoc_STR("The optional C accelerator of gae_sandbox's host-code fast path."),
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&GuardType) < 0 || PyType_Ready(&AttributeType) < 0
            || PyType_Ready(&StatGuardType) < 0) {
        return NULL;
    }
#ifdef HAVE_OPENAT2_CALL
    if (PyType_Ready(&OpenGuardType) < 0) {
        return NULL;
    }
#endif
    /* the attribute names the C fast paths read, made once */
    struct { PyObject **slot; const char *text; } names[] = {
        {&known_imports_name, "known_imports"}, {&spec_name_key, "name"},
        {&layers_name, "layers"}, {&readable_name, "readable"}, {&st_dev_name, "st_dev"},
        {&st_ino_name, "st_ino"}, {&st_mode_name, "st_mode"},
        {&st_ctime_ns_name, "st_ctime_ns"},
#ifdef HAVE_OPENAT2_CALL
        {&open_roots_name, "open_roots"}, {&cwd_name, "cwd"}, {&extras_name, "extras"},
        {&roots_key, "gae_sandbox.root_descriptors"}, {&race_free_name, "RACE_FREE_OPENS"},
        {&raw_name, "raw"}, {&buffer_name, "buffer"}, {&name_attribute, "name"},
        {&encoding_name, "encoding"}, {&errors_name, "errors"}, {&newline_name, "newline"},
#endif
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (*names[i].slot == NULL) {
            *names[i].slot = PyUnicode_InternFromString(names[i].text);
            if (*names[i].slot == NULL) {
                return NULL;
            }
        }
    }
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&GuardType);
    if (PyModule_AddObject(module, "Guard", (PyObject *)&GuardType) < 0) {
        Py_DECREF(&GuardType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&AttributeType);
    if (PyModule_AddObject(module, "Attribute", (PyObject *)&AttributeType) < 0) {
        Py_DECREF(&AttributeType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&StatGuardType);
    if (PyModule_AddObject(module, "StatGuard", (PyObject *)&StatGuardType) < 0) {
        Py_DECREF(&StatGuardType);
        Py_DECREF(module);
        return NULL;
    }
#ifdef HAVE_OPENAT2_CALL
    Py_INCREF(&OpenGuardType);
    if (PyModule_AddObject(module, "OpenGuard", (PyObject *)&OpenGuardType) < 0) {
        Py_DECREF(&OpenGuardType);
        Py_DECREF(module);
        return NULL;
    }
#endif
    return module;
}
