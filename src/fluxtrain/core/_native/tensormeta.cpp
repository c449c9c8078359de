// Bulk reads of tensor metadata for the fused step's per-step checks.
//
// fluxtrain.core.plan checks, every step, the type, address, dtype, device, shape,
// contiguity (or strides) and inference flag of every parameter, and the dtype,
// device, shape and address of every gradient. Read from Python that is one
// attribute access per tensor and field (about 0.1 us each, more once the
// kernel has streamed the arrays through the caches); here it is one call per
// list. Nothing is written, nothing is kept: each function reads a Python list of
// tensors and returns a new bytes/list/bool, or None when an element is not a
// tensor (the caller then takes its Python route, which decides).
//
// Encodings (int64 words, per tensor, in list order):
//   fingerprint: type object address, data address, dtype, device type, device
//                index, dim, contiguous, inference, read-only mark (the truth of the
//                attribute _fluxtrain_readonly: 0, 1, or 2 if it cannot be read),
//                sizes[dim], then strides[dim] only if not contiguous
//   like:        dtype, device type, device index, dim, sizes[dim]
//   slot_addresses: data addresses of the states' tensors: the states themselves
//                (one slot), or items 0 then items 1 of each state tuple (two)
// and all_contiguous / all_float_or_complex / all_require_grad / any_requires_grad: one
// bool for the list.
// Equal bytes therefore mean equal fields, tensor by tensor.
//
// gradient_reads reads like, addresses and all_contiguous of a gradient list in one
// pass; leaf_states reads the states of a list of Leaf objects that all hold one
// rule, unfrozen; identical compares two lists' elements by identity (touching no
// element: no reference count changes); restate builds the next step's Adam state
// tuples (new tuples of the given NamedTuple type; nothing else is changed);
// grads_by_id and values_if_keys read the implicit step's gradients and states;
// entries_unchanged and plan_walk are the explicit plan's structure check and gradient
// walk (fluxtrain.optimisers.stepplan), for the plain containers only.
//
// Long lists (parallel_threshold(), 512 items) are read on the process's OpenMP threads
// (torch's own pool) when built with -fopenmp by addresses, the all_* reads,
// gradient_reads and slot_addresses: once the step kernel has streamed the arrays
// through the caches every object read is a chain of cache misses, and two cores wait
// on twice as many at once (2,000 Adam states: 420 to 250 us, 2,000 gradients: 295 to
// 235 us). fingerprint stays on the calling thread: it reads each parameter's Python
// attributes there anyway, and lines another core has fetched then cost more than the
// split saves. Only plain tensors are read off the calling thread (exactly Tensor or
// Parameter, no Python dispatch: reads that cannot run Python code); anything else, or
// any read that throws, and the whole list is read again on the calling thread, as
// without OpenMP, so the answers are the same either way. store_states sets every
// Leaf's state (as setattr, without a Python call per leaf).
//
// Built by fluxtrain.core.tensormeta against the installed torch (its headers and
// libraries), cached like the step kernel; a build that fails only means the Python
// route.
#include <Python.h>
#include <structmember.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>

#define FLUXTRAIN_TENSORMETA_ABI 6

namespace {

// Attribute names, interned once at import.
PyObject* name_readonly = nullptr;
PyObject* name_rule = nullptr;
PyObject* name_state = nullptr;
PyObject* name_frozen = nullptr;
PyObject* name_parameters = nullptr;
PyObject* name_modules = nullptr;
PyObject* name_children = nullptr;

// getattr(o, name) -> new reference, nullptr (no such attribute, error cleared), or
// nullptr with *failed set (the read raised something else; error cleared).
PyObject* lookup(PyObject* o, PyObject* name, bool* failed) {
  PyObject* v = nullptr;
#if PY_VERSION_HEX >= 0x030D0000
  int r = PyObject_GetOptionalAttr(o, name, &v);
#else
  int r = _PyObject_LookupAttr(o, name, &v);
#endif
  if (r < 0) {
    PyErr_Clear();
    *failed = true;
    return nullptr;
  }
  return r == 0 ? nullptr : v;
}

// The truth of getattr(o, "_fluxtrain_readonly", False): 0, 1, or 2 when unreadable.
int64_t readonly_mark(PyObject* o) {
  bool failed = false;
  PyObject* v = lookup(o, name_readonly, &failed);
  if (v == nullptr) return failed ? 2 : 0;
  int t = PyObject_IsTrue(v);
  Py_DECREF(v);
  if (t < 0) {
    PyErr_Clear();
    return 2;
  }
  return t;
}

// ------------------------------------------------------------------ parallel reads
// From this many items on, a list is read on several threads (below that the fork and
// join cost more than the misses they overlap); settable for the tests.
Py_ssize_t parallel_min = 512;

// The number of threads to read n items on (1: the calling thread alone).
int threads_for(Py_ssize_t n) {
#ifdef _OPENMP
  if (n < parallel_min || omp_in_parallel()) return 1;
  Py_ssize_t cap = n / (parallel_min > 1 ? parallel_min / 2 : 1);
  int nt = omp_get_max_threads();
  return cap < nt ? static_cast<int>(cap) : nt;
#else
  (void)n;
  return 1;
#endif
}

// Whether o is a tensor that a thread without the GIL may read: exactly a Tensor or a
// Parameter (a subclass's isinstance check may run Python code) without Python dispatch
// (its sizes and strides may be computed by Python code).
bool plain(PyObject* o) {
  return THPVariable_CheckExact(o)
         && !THPVariable_Unpack(o).unsafeGetTensorImpl()->is_python_dispatch();
}

// read(i) for every i in [0, n) on nt threads. False if any read answered false or
// threw: the caller then reads the list on its own thread, as it would have. The
// calling thread holds the GIL and runs no Python code meanwhile, so nothing the reads
// touch changes; they only read memory (no reference counts, no Python calls; a
// copy-on-write storage is materialised by data_ptr() as on the calling thread).
template <typename Read>
bool read_parallel(Py_ssize_t n, int nt, Read read) {
  std::atomic<bool> ok{true};
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static)
#endif
  for (Py_ssize_t i = 0; i < n; i++) {
    if (!ok.load(std::memory_order_relaxed)) continue;
    try {
      if (!read(i)) ok.store(false, std::memory_order_relaxed);
    } catch (...) {
      ok.store(false, std::memory_order_relaxed);
    }
  }
  (void)nt;
  return ok.load();
}

// The most dimensions a parallel read records per tensor (more: the calling thread).
constexpr int64_t MAX_DIM = 8;

// One tensor's fields as gradient_reads encodes them.
struct Fields {
  int64_t data, dtype, dev_type, dev_index, dim, contig;
  int64_t sizes[MAX_DIM];
};

// Fill f from a plain tensor o (false: not plain, or too many dimensions).
bool read_fields(PyObject* o, Fields& f) {
  if (!plain(o)) return false;
  const at::Tensor& t = THPVariable_Unpack(o);
  int64_t d = t.dim();
  if (d > MAX_DIM) return false;
  f.data = reinterpret_cast<int64_t>(t.data_ptr());
  f.dtype = static_cast<int64_t>(t.scalar_type());
  f.dev_type = static_cast<int64_t>(t.device().type());
  f.dev_index = static_cast<int64_t>(t.device().index());
  f.dim = d;
  f.contig = t.is_contiguous();
  for (int64_t k = 0; k < d; k++) f.sizes[k] = t.size(k);
  return true;
}

void put_like_fields(std::vector<int64_t>& w, const Fields& f) {
  w.push_back(f.dtype);
  w.push_back(f.dev_type);
  w.push_back(f.dev_index);
  w.push_back(f.dim);
  for (int64_t k = 0; k < f.dim; k++) w.push_back(f.sizes[k]);
}

// The tensors of ``list``, or false (an element is not a tensor, or not a list).
bool tensors_of(PyObject* list, std::vector<const at::Tensor*>& out) {
  if (!PyList_Check(list)) return false;
  Py_ssize_t n = PyList_GET_SIZE(list);
  out.reserve(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* o = PyList_GET_ITEM(list, i);
    if (!THPVariable_Check(o)) return false;
    out.push_back(&THPVariable_Unpack(o));
  }
  return true;
}

void put_like(std::vector<int64_t>& w, const at::Tensor& t) {
  w.push_back(static_cast<int64_t>(t.scalar_type()));
  w.push_back(static_cast<int64_t>(t.device().type()));
  w.push_back(static_cast<int64_t>(t.device().index()));
  int64_t d = t.dim();
  w.push_back(d);
  for (int64_t k = 0; k < d; k++) w.push_back(t.size(k));
}

PyObject* to_bytes(const std::vector<int64_t>& w) {
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(w.data()),
                                   static_cast<Py_ssize_t>(w.size() * sizeof(int64_t)));
}

// A list of ints, as a new Python list (nullptr: out of memory).
PyObject* int_list(const std::vector<long long>& ptrs) {
  PyObject* out = PyList_New(static_cast<Py_ssize_t>(ptrs.size()));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < ptrs.size(); i++) {
    PyObject* v = PyLong_FromLongLong(ptrs[i]);
    if (v == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyList_SET_ITEM(out, static_cast<Py_ssize_t>(i), v);
  }
  return out;
}

// A new list of n items (to be filled), or nullptr: out of memory (an error set), or
// ``src`` (the list or dict being read) no longer holds n items. Allocating a tracked
// object may run the cycle collector and with it arbitrary finalizers (CPython < 3.12
// collects synchronously), which could change ``src``; the caller then answers None.
PyObject* new_list_of(Py_ssize_t n, PyObject* src) {
  PyObject* out = PyList_New(n);
  if (out == nullptr) return nullptr;
  Py_ssize_t now = PyList_Check(src) ? PyList_GET_SIZE(src) : PyDict_Check(src) ? PyDict_GET_SIZE(src) : n;
  if (now != n) {
    Py_DECREF(out);
    return nullptr;
  }
  return out;
}

// Every entry point: a C++ exception (a tensor kind without storage or strides) must
// not cross into Python's C code; the answer is then None (the Python route decides).
#define GUARDED(...)   \
  try {                \
    __VA_ARGS__        \
  } catch (...) {      \
    Py_RETURN_NONE;    \
  }

PyObject* fingerprint_(PyObject* list) {
  // (read on this thread alone, even when long: the parameters it reads are read again
  // on this thread, and lines another core has fetched cost more than they save)
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  std::vector<int64_t> w;
  w.reserve(ts.size() * 12);
  // the elements held for the whole read: a read-only mark's getattr may run Python code
  // (a tensor subclass's property) that changes the list, and ts points into them
  Py_ssize_t n = PyList_GET_SIZE(list);
  std::vector<PyObject*> held(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; i++) {
    held[static_cast<size_t>(i)] = PyList_GET_ITEM(list, i);
    Py_INCREF(held[static_cast<size_t>(i)]);
  }
  struct Release {
    std::vector<PyObject*>& objs;
    ~Release() {
      for (PyObject* o : objs) Py_DECREF(o);
    }
  } release{held};
  for (Py_ssize_t i = 0; i < n; i++) {
    const at::Tensor* t = ts[static_cast<size_t>(i)];
    PyObject* o = held[static_cast<size_t>(i)];
    w.push_back(reinterpret_cast<int64_t>(Py_TYPE(o)));
    w.push_back(reinterpret_cast<int64_t>(t->data_ptr()));
    bool contig = t->is_contiguous();
    int64_t d = t->dim();
    w.push_back(static_cast<int64_t>(t->scalar_type()));
    w.push_back(static_cast<int64_t>(t->device().type()));
    w.push_back(static_cast<int64_t>(t->device().index()));
    w.push_back(d);
    w.push_back(contig);
    w.push_back(t->is_inference());
    size_t mark = w.size();
    w.push_back(0);
    for (int64_t k = 0; k < d; k++) w.push_back(t->size(k));
    if (!contig)
      for (int64_t k = 0; k < d; k++) w.push_back(t->stride(k));
    w[mark] = readonly_mark(o);
    if (PyList_GET_SIZE(list) != n || PyList_GET_ITEM(list, i) != o)
      Py_RETURN_NONE;  // the list changed meanwhile: no answer for it
  }
  return to_bytes(w);
}

PyObject* like_(PyObject* list) {
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  std::vector<int64_t> w;
  w.reserve(ts.size() * 6);
  for (const at::Tensor* t : ts) put_like(w, *t);
  return to_bytes(w);
}

PyObject* addresses_(PyObject* list) {
  int nt = PyList_Check(list) ? threads_for(PyList_GET_SIZE(list)) : 1;
  if (nt > 1) {
    std::vector<long long> ptrs(static_cast<size_t>(PyList_GET_SIZE(list)));
    PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
    if (read_parallel(PyList_GET_SIZE(list), nt, [&](Py_ssize_t i) {
          if (!plain(items[i])) return false;
          ptrs[static_cast<size_t>(i)] =
              reinterpret_cast<long long>(THPVariable_Unpack(items[i]).data_ptr());
          return true;
        }))
      return int_list(ptrs);
  }
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  std::vector<long long> ptrs;  // all read first: a throw leaves nothing half-built
  ptrs.reserve(ts.size());
  for (const at::Tensor* t : ts) ptrs.push_back(reinterpret_cast<long long>(t->data_ptr()));
  return int_list(ptrs);
}

// Whether pred holds for every tensor of the list (None: not a list of tensors).
template <typename Pred>
PyObject* all_of(PyObject* list, Pred pred) {
  int nt = PyList_Check(list) ? threads_for(PyList_GET_SIZE(list)) : 1;
  if (nt > 1) {
    std::atomic<bool> holds{true};
    PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
    if (read_parallel(PyList_GET_SIZE(list), nt, [&](Py_ssize_t i) {
          if (!plain(items[i])) return false;
          if (!pred(THPVariable_Unpack(items[i]))) holds.store(false, std::memory_order_relaxed);
          return true;
        })) {
      if (holds.load()) Py_RETURN_TRUE;
      Py_RETURN_FALSE;
    }
  }
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  for (const at::Tensor* t : ts)
    if (!pred(*t)) Py_RETURN_FALSE;
  Py_RETURN_TRUE;
}

// Whether ``prev`` is an exact list of exact ints equal to ``ptrs``, item by item.
bool same_ints(PyObject* prev, const std::vector<long long>& ptrs) {
  if (prev == nullptr || !PyList_CheckExact(prev)
      || PyList_GET_SIZE(prev) != static_cast<Py_ssize_t>(ptrs.size()))
    return false;
  for (size_t i = 0; i < ptrs.size(); i++) {
    PyObject* v = PyList_GET_ITEM(prev, static_cast<Py_ssize_t>(i));
    if (!PyLong_CheckExact(v)) return false;
    int overflow = 0;
    long long a = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow != 0 || a != ptrs[i]) return false;  // (no error: an exact int)
  }
  return true;
}

// (like bytes, addresses list, all contiguous) of a list whose every element's type
// is exactly one of ``types`` (a tuple of type objects), else None. The addresses are
// the list ``prev`` itself when it holds exactly these (the last step's, for the usual
// step with the same gradient tensors: no new ints, and the caller's comparison with
// it is an identity check).
PyObject* gradient_reads_(PyObject* list, PyObject* types, PyObject* prev) {
  if (!PyList_Check(list) || !PyTuple_Check(types)) Py_RETURN_NONE;
  Py_ssize_t n = PyList_GET_SIZE(list), nt = PyTuple_GET_SIZE(types);
  std::vector<int64_t> w;
  w.reserve(static_cast<size_t>(n) * 6);
  std::vector<long long> ptrs;
  ptrs.reserve(static_cast<size_t>(n));
  bool contig = true;
  int threads = threads_for(n);
  if (threads > 1) {
    // (not value-initialised: every read fills its own; 2,000 gradients are 224 KB)
    std::unique_ptr<Fields[]> fs(new Fields[static_cast<size_t>(n)]);
    PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
    PyObject** tps = reinterpret_cast<PyTupleObject*>(types)->ob_item;
    Fields* f = fs.get();
    if (read_parallel(n, threads, [&](Py_ssize_t i) {
          bool known = false;
          for (Py_ssize_t k = 0; k < nt; k++)
            if (reinterpret_cast<PyObject*>(Py_TYPE(items[i])) == tps[k]) known = true;
          return known && read_fields(items[i], f[i]);
        })) {
      for (Py_ssize_t i = 0; i < n; i++) {
        const Fields& g = f[i];
        put_like_fields(w, g);
        ptrs.push_back(g.data);
        contig = contig && g.contig;
      }
      n = 0;  // read: skip the loop below
    }
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* o = PyList_GET_ITEM(list, i);
    bool known = false;
    for (Py_ssize_t k = 0; k < nt; k++)
      if (reinterpret_cast<PyObject*>(Py_TYPE(o)) == PyTuple_GET_ITEM(types, k)) known = true;
    if (!known || !THPVariable_Check(o)) Py_RETURN_NONE;
    const at::Tensor& t = THPVariable_Unpack(o);
    put_like(w, t);
    ptrs.push_back(reinterpret_cast<long long>(t.data_ptr()));
    contig = contig && t.is_contiguous();
  }
  PyObject* like = to_bytes(w);
  if (like == nullptr) return nullptr;
  PyObject* addr = same_ints(prev, ptrs) ? Py_NewRef(prev) : int_list(ptrs);
  if (addr == nullptr) {
    Py_DECREF(like);
    return nullptr;
  }
  return Py_BuildValue("(NNO)", like, addr, contig ? Py_True : Py_False);
}

// The data addresses of the states' tensors as int64 bytes: nslots 1, every state a
// tensor; nslots 2, every state a tuple whose items 0 and 1 are tensors (all items 0,
// then all items 1). None if a state is not of that form.
PyObject* slot_addresses_(PyObject* list, long nslots) {
  if (!PyList_Check(list) || (nslots != 1 && nslots != 2)) Py_RETURN_NONE;
  Py_ssize_t n = PyList_GET_SIZE(list);
  std::vector<int64_t> w(static_cast<size_t>(n * nslots));
  int threads = threads_for(n * nslots);
  if (threads > 1) {
    PyObject** items = reinterpret_cast<PyListObject*>(list)->ob_item;
    int64_t* out = w.data();
    if (read_parallel(n, threads, [&](Py_ssize_t i) {
          PyObject* s = items[i];
          if (nslots == 1) {
            if (!plain(s)) return false;
            out[i] = reinterpret_cast<int64_t>(THPVariable_Unpack(s).data_ptr());
            return true;
          }
          if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) < 2) return false;
          for (Py_ssize_t k = 0; k < 2; k++) {
            PyObject* t = PyTuple_GET_ITEM(s, k);
            if (!plain(t)) return false;
            out[k * n + i] = reinterpret_cast<int64_t>(THPVariable_Unpack(t).data_ptr());
          }
          return true;
        }))
      return to_bytes(w);
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* s = PyList_GET_ITEM(list, i);
    if (nslots == 1) {
      if (!THPVariable_Check(s)) Py_RETURN_NONE;
      w[i] = reinterpret_cast<int64_t>(THPVariable_Unpack(s).data_ptr());
      continue;
    }
    if (!PyTuple_Check(s) || PyTuple_GET_SIZE(s) < 2) Py_RETURN_NONE;
    for (Py_ssize_t k = 0; k < 2; k++) {
      PyObject* t = PyTuple_GET_ITEM(s, k);
      if (!THPVariable_Check(t)) Py_RETURN_NONE;
      w[k * n + i] = reinterpret_cast<int64_t>(THPVariable_Unpack(t).data_ptr());
    }
  }
  return to_bytes(w);
}

// New ``cls`` tuples (m, v, beta_t) from each state's items 0 and 1 and the one
// ``beta_t``: the next step's Adam states, as ``cls(s.m, s.v, beta_t)`` would make
// them. None unless ``cls`` is a plain 3-field tuple subclass (no instance dict),
// every state is exactly a ``cls`` and every state's item 2 is the object ``was``.
//
// The new tuples are not tracked by the cycle collector. Tracked, the 2,000 states of
// a 2,000-leaf step are traversed by the young-generation collections their own
// allocation triggers, then promoted and traversed again: about 1 ms a step, more
// than all the step's checks. Reference counting frees them as before; only a cycle
// through a state (a state tensor that refers back to its own state object, e.g. as
// an attribute) would then not be collected.
PyObject* restate_(PyObject* cls_obj, PyObject* list, PyObject* was, PyObject* beta_t) {
  if (!PyType_Check(cls_obj) || !PyList_Check(list)) Py_RETURN_NONE;
  PyTypeObject* cls = reinterpret_cast<PyTypeObject*>(cls_obj);
  if (!PyType_IsSubtype(cls, &PyTuple_Type) || cls->tp_dictoffset != 0
      || cls->tp_alloc == nullptr)
    Py_RETURN_NONE;
  Py_ssize_t n = PyList_GET_SIZE(list);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* s = PyList_GET_ITEM(list, i);
    if (Py_TYPE(s) != cls || PyTuple_GET_SIZE(s) != 3 || PyTuple_GET_ITEM(s, 2) != was)
      Py_RETURN_NONE;
  }
  PyObject* out = new_list_of(n, list);
  if (out == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* t = cls->tp_alloc(cls, 3);  // may run the collector: read s after it
    if (t == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyObject* s = PyList_GET_SIZE(list) == n ? PyList_GET_ITEM(list, i) : nullptr;
    if (s == nullptr || Py_TYPE(s) != cls || PyTuple_GET_ITEM(s, 2) != was) {
      Py_DECREF(t);  // (NULL items: tuple and list deallocation skip them)
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    for (Py_ssize_t k = 0; k < 2; k++) {
      PyObject* item = PyTuple_GET_ITEM(s, k);
      Py_INCREF(item);
      PyTuple_SET_ITEM(t, k, item);
    }
    Py_INCREF(beta_t);
    PyTuple_SET_ITEM(t, 2, beta_t);
    PyObject_GC_UnTrack(t);
    PyList_SET_ITEM(out, i, t);
  }
  return out;
}

// For the implicit step: the gradient stored under id(x) in the dict ``by_id`` for
// every x of ``xs``, as (list, whether one requires grad), if each is exactly of type
// ``tensor_type`` and is not x itself; None otherwise (a missing or None gradient, a
// subclass, anything unusual: the caller's per-parameter loop decides).
PyObject* grads_by_id(PyObject*, PyObject* args) {
  PyObject *by_id, *xs, *tensor_type;
  if (!PyArg_ParseTuple(args, "OOO", &by_id, &xs, &tensor_type)) return nullptr;
  if (!PyDict_CheckExact(by_id) || !PyList_Check(xs)) Py_RETURN_NONE;
  Py_ssize_t n = PyList_GET_SIZE(xs);
  PyObject* out = new_list_of(n, xs);
  if (out == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  bool any_rg = false;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* x = PyList_GET_ITEM(xs, i);
    PyObject* key = PyLong_FromVoidPtr(x);  // id(x)
    if (key == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyObject* g = PyDict_GetItemWithError(by_id, key);  // borrowed
    Py_DECREF(key);
    if (g == nullptr || g == x || reinterpret_cast<PyObject*>(Py_TYPE(g)) != tensor_type
        || !THPVariable_Check(g)) {
      PyErr_Clear();
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    try {
      any_rg = any_rg || THPVariable_Unpack(g).requires_grad();
    } catch (...) {
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    Py_INCREF(g);
    PyList_SET_ITEM(out, i, g);
  }
  PyObject* res = Py_BuildValue("(NO)", out, any_rg ? Py_True : Py_False);
  return res;
}

// The values of the dict ``d`` as a list if its keys are exactly the objects of the
// list ``keys``, in order; None otherwise. Reads the entries without running any
// Python code (so no entry can go away meanwhile) and without touching the keys.
PyObject* values_if_keys(PyObject*, PyObject* args) {
  PyObject *d, *keys;
  if (!PyArg_ParseTuple(args, "OO", &d, &keys)) return nullptr;
  if (!PyDict_CheckExact(d) || !PyList_Check(keys)) Py_RETURN_NONE;
  Py_ssize_t n = PyList_GET_SIZE(keys);
  if (PyDict_GET_SIZE(d) != n) Py_RETURN_NONE;
  PyObject* out = new_list_of(n, d);
  if (out == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  Py_ssize_t pos = 0, i = 0;
  PyObject *k, *v;
  while (PyDict_Next(d, &pos, &k, &v)) {
    if (i >= n || k != PyList_GET_ITEM(keys, i)) {
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    Py_INCREF(v);
    PyList_SET_ITEM(out, i, v);
    i++;
  }
  if (i != n) {
    Py_DECREF(out);
    Py_RETURN_NONE;
  }
  return out;
}

// A C-contiguous int64 buffer of ``o`` (a numpy array), or false.
struct Int64s {
  Py_buffer view{};
  bool ok = false;
  explicit Int64s(PyObject* o) {
    if (o == Py_None || PyObject_GetBuffer(o, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
      PyErr_Clear();
      return;
    }
    ok = view.itemsize == 8 && view.format != nullptr
         && (view.format[0] == 'l' || view.format[0] == 'q') && view.format[1] == 0;
  }
  ~Int64s() {
    if (view.obj != nullptr) PyBuffer_Release(&view);
  }
  Py_ssize_t size() const { return view.len / 8; }
  const int64_t* data() const { return static_cast<const int64_t*>(view.buf); }
};

// The native kernel's per-step gradient check, for gradient addresses ``gptr`` (a list
// of ints) of byte sizes ``gsz``, against the sorted, disjoint parameter and state
// byte ranges [lo[k], hi[k]):
//   (addresses as int64 bytes, the address of those bytes, whether a non-empty
//    gradient overlaps a range, whether gptr[i] == gptr[0] + gstarts[i] for all i)
// (gstarts None: the last is False). None if an argument is not of that form.
PyObject* gradient_check(PyObject*, PyObject* args) {
  PyObject *gptr, *gsz_o, *lo_o, *hi_o, *gstarts_o;
  if (!PyArg_ParseTuple(args, "OOOOO", &gptr, &gsz_o, &lo_o, &hi_o, &gstarts_o)) return nullptr;
  if (!PyList_Check(gptr)) Py_RETURN_NONE;
  Int64s gsz(gsz_o), lo(lo_o), hi(hi_o), gstarts(gstarts_o);
  Py_ssize_t n = PyList_GET_SIZE(gptr);
  if (!gsz.ok || !lo.ok || !hi.ok || gsz.size() != n || lo.size() != hi.size()
      || (gstarts_o != Py_None && (!gstarts.ok || gstarts.size() != n)))
    Py_RETURN_NONE;
  std::vector<int64_t> w(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* o = PyList_GET_ITEM(gptr, i);
    if (!PyLong_CheckExact(o)) Py_RETURN_NONE;
    long long a = PyLong_AsLongLong(o);
    if (a == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      Py_RETURN_NONE;
    }
    w[i] = a;
  }
  bool overlap = false;
  const int64_t *plo = lo.data(), *phi = hi.data(), *psz = gsz.data();
  Py_ssize_t nr = lo.size();
  for (Py_ssize_t i = 0; i < n && !overlap; i++) {
    if (psz[i] <= 0) continue;
    int64_t end = w[i] + psz[i];
    // the last range starting before end (searchsorted(lo, end, "left") - 1)
    Py_ssize_t a = 0, b = nr;
    while (a < b) {
      Py_ssize_t mid = a + (b - a) / 2;
      if (plo[mid] < end) a = mid + 1;
      else b = mid;
    }
    overlap = a > 0 && phi[a - 1] > w[i];
  }
  bool back_to_back = gstarts_o != Py_None;
  for (Py_ssize_t i = 0; i < n && back_to_back; i++)
    back_to_back = w[i] == w[0] + gstarts.data()[i];
  PyObject* bytes = to_bytes(w);
  if (bytes == nullptr) return nullptr;
  PyObject* address = PyLong_FromVoidPtr(PyBytes_AS_STRING(bytes));
  if (address == nullptr) {
    Py_DECREF(bytes);
    return nullptr;
  }
  return Py_BuildValue("(NNOO)", bytes, address, overlap ? Py_True : Py_False,
                       back_to_back ? Py_True : Py_False);
}

PyObject* gradient_reads(PyObject*, PyObject* args) {
  PyObject *list, *types, *prev = nullptr;
  if (!PyArg_ParseTuple(args, "OO|O", &list, &types, &prev)) return nullptr;
  GUARDED(return gradient_reads_(list, types, prev);)
}
PyObject* slot_addresses(PyObject*, PyObject* args) {
  PyObject* list;
  long nslots;
  if (!PyArg_ParseTuple(args, "Ol", &list, &nslots)) return nullptr;
  GUARDED(return slot_addresses_(list, nslots);)
}
PyObject* restate(PyObject*, PyObject* args) {
  PyObject *cls, *list, *was, *beta_t;
  if (!PyArg_ParseTuple(args, "OOOO", &cls, &list, &was, &beta_t)) return nullptr;
  return restate_(cls, list, was, beta_t);
}

// The byte offset of attribute ``name`` in instances of ``tp`` where it is a plain
// __slots__ entry that getattr (set: setattr) reads (writes) there: a writable object
// member descriptor on the type, found through its MRO, with the generic attribute
// access. Else -1, and only getattr/setattr can say what the attribute is.
Py_ssize_t slot_offset(PyTypeObject* tp, PyObject* name, bool set) {
  if (set ? tp->tp_setattro != PyObject_GenericSetAttr
          : tp->tp_getattro != PyObject_GenericGetAttr)
    return -1;
  PyObject* d = _PyType_Lookup(tp, name);  // borrowed; runs no Python code
  if (d == nullptr || !Py_IS_TYPE(d, &PyMemberDescr_Type)) return -1;
  PyMemberDef* m = reinterpret_cast<PyMemberDescrObject*>(d)->d_member;
  if (m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
  return m->offset;
}

PyObject*& slot_at(PyObject* o, Py_ssize_t offset) {
  return *reinterpret_cast<PyObject**>(reinterpret_cast<char*>(o) + offset);
}

// leaf_states for leaves of one type whose rule, frozen and state are plain slots (a
// Leaf): the slots read directly, as getattr would read them. nullptr with no error:
// take the general route (another type, or a frozen flag that is not a bool).
PyObject* leaf_states_slots(PyObject* list, PyObject* rule, Py_ssize_t n) {
  PyTypeObject* tp = Py_TYPE(PyList_GET_ITEM(list, 0));
  Py_ssize_t orule = slot_offset(tp, name_rule, false);
  Py_ssize_t ofrozen = slot_offset(tp, name_frozen, false);
  Py_ssize_t ostate = slot_offset(tp, name_state, false);
  if (orule < 0 || ofrozen < 0 || ostate < 0) return nullptr;
  for (Py_ssize_t i = 0; i < n; i++) {  // no Python code runs in here
    PyObject* leaf = PyList_GET_ITEM(list, i);
    PyObject* f = Py_TYPE(leaf) == tp ? slot_at(leaf, ofrozen) : nullptr;
    if (f != Py_False && f != Py_True) return nullptr;  // (unset: getattr's error)
    if (slot_at(leaf, orule) != rule || f == Py_True || slot_at(leaf, ostate) == nullptr)
      Py_RETURN_NONE;
  }
  PyObject* out = new_list_of(n, list);  // (may run the collector: read the slots after)
  if (out == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* leaf = PyList_GET_ITEM(list, i);
    PyObject* st = Py_TYPE(leaf) == tp && slot_at(leaf, orule) == rule
                   && slot_at(leaf, ofrozen) == Py_False ? slot_at(leaf, ostate) : nullptr;
    if (st == nullptr) {  // changed by the collector's finalizers
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    PyList_SET_ITEM(out, i, Py_NewRef(st));
  }
  return out;
}

// [leaf.state for leaf in leaves] if every leaf.rule is ``rule`` and no leaf.frozen is
// true; None otherwise (or if an attribute cannot be read).
PyObject* leaf_states(PyObject*, PyObject* args) {
  PyObject *list, *rule;
  if (!PyArg_ParseTuple(args, "OO", &list, &rule)) return nullptr;
  if (!PyList_Check(list)) Py_RETURN_NONE;
  Py_ssize_t n = PyList_GET_SIZE(list);
  if (n > 0) {
    PyObject* got = leaf_states_slots(list, rule, n);
    if (got != nullptr || PyErr_Occurred()) return got;
  }
  PyObject* out = new_list_of(n, list);
  if (out == nullptr) return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
  for (Py_ssize_t i = 0; i < n; i++) {
    // (the lookups may run Python code, a Leaf subclass's property: re-check the list)
    if (PyList_GET_SIZE(list) != n) {
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    PyObject* leaf = PyList_GET_ITEM(list, i);
    Py_INCREF(leaf);  // held through its own lookups
    bool failed = false;
    PyObject* r = lookup(leaf, name_rule, &failed);
    bool ok = r == rule;
    Py_XDECREF(r);
    PyObject* f = ok ? lookup(leaf, name_frozen, &failed) : nullptr;
    if (ok) {
      int t = f == nullptr ? -1 : PyObject_IsTrue(f);
      Py_XDECREF(f);
      if (t < 0) PyErr_Clear();
      ok = t == 0;
    }
    PyObject* st = ok ? lookup(leaf, name_state, &failed) : nullptr;
    Py_DECREF(leaf);
    if (st == nullptr) {
      Py_DECREF(out);
      Py_RETURN_NONE;
    }
    PyList_SET_ITEM(out, i, st);
  }
  return out;
}

// Whether ``d`` holds exactly the keys ``keys`` and the values ``vals`` (tuples), in
// that order: 1 yes, 0 no, -1 cannot say here (not an exact dict, or keys that are not
// the same object and not both exact str, whose == could run Python code). The Python
// test it stands for: len(d) == len(keys) and all(map(is_, d.values(), vals)) and
// tuple(d) == keys.
int dict_is(PyObject* d, PyObject* keys, PyObject* vals) {
  if (!PyDict_CheckExact(d) || !PyTuple_Check(keys) || !PyTuple_Check(vals)) return -1;
  Py_ssize_t n = PyTuple_GET_SIZE(keys);
  if (PyDict_GET_SIZE(d) != n) return 0;
  Py_ssize_t pos = 0, i = 0;
  PyObject *k, *v;
  int verdict = 1;
  while (PyDict_Next(d, &pos, &k, &v)) {  // (nothing below runs Python code)
    if (i >= n) return 0;
    if (i >= PyTuple_GET_SIZE(vals) || v != PyTuple_GET_ITEM(vals, i)) verdict = 0;
    PyObject* want = PyTuple_GET_ITEM(keys, i);
    if (k != want) {
      if (!PyUnicode_CheckExact(k) || !PyUnicode_CheckExact(want)) return -1;
      if (PyUnicode_Compare(k, want) != 0) verdict = 0;
    }
    i++;
  }
  return i == n ? verdict : 0;
}

// StepPlan.valid's container checks: every (dict, keys, values) of ``dicts`` holds them
// (dict_is), and every (module, parameter keys, parameters, submodule keys,
// submodules) of ``mods`` has them in its _parameters and _modules. True, False, or
// None where only the Python test can say (an entry not of that form, a dict that is
// not exactly a dict, keys that are not str, an attribute that cannot be read).
PyObject* entries_unchanged(PyObject*, PyObject* args) {
  PyObject *dicts, *mods;
  if (!PyArg_ParseTuple(args, "OO", &dicts, &mods)) return nullptr;
  if (!PyList_CheckExact(dicts) || !PyList_CheckExact(mods)) Py_RETURN_NONE;
  bool same = true;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dicts) && same; i++) {
    PyObject* e = PyList_GET_ITEM(dicts, i);
    if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 3) Py_RETURN_NONE;
    int r = dict_is(PyTuple_GET_ITEM(e, 0), PyTuple_GET_ITEM(e, 1), PyTuple_GET_ITEM(e, 2));
    if (r < 0) Py_RETURN_NONE;
    same = r == 1;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(mods) && same; i++) {
    PyObject* e = PyList_GET_ITEM(mods, i);
    if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != 5) Py_RETURN_NONE;
    Py_INCREF(e);  // (the attribute reads may run Python code: a module's __getattr__)
    PyObject* m = PyTuple_GET_ITEM(e, 0);
    PyObject* p = PyObject_GetAttr(m, name_parameters);
    PyObject* s = p != nullptr ? PyObject_GetAttr(m, name_modules) : nullptr;
    int r = -1;
    if (s != nullptr) {
      r = dict_is(p, PyTuple_GET_ITEM(e, 1), PyTuple_GET_ITEM(e, 2));
      if (r == 1) r = dict_is(s, PyTuple_GET_ITEM(e, 3), PyTuple_GET_ITEM(e, 4));
    }
    Py_XDECREF(p);
    Py_XDECREF(s);
    Py_DECREF(e);
    if (r < 0) {
      PyErr_Clear();
      Py_RETURN_NONE;
    }
    same = r == 1;
  }
  if (same) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

// ------------------------------------------------------------------ the plan's walk
// fluxtrain.optimisers.stepplan's compiled nodes: (LEAF, position), (NOGRAD,), (IGNORE,),
// (SEQ, kids, run or None), (DICT, keys, kids), (MOD, keys, kids); the kinds are
// stepplan's _LEAF ... _MOD (range(6)).
enum { NODE_LEAF = 0, NODE_NOGRAD = 1, NODE_IGNORE = 2, NODE_SEQ = 3, NODE_DICT = 4, NODE_MOD = 5 };

// out[p] = g (a new reference in; the old item is None or stepplan's _UNSEEN marker).
bool put_at(PyObject* out, PyObject* pos, PyObject* g) {
  Py_ssize_t p = PyLong_AsSsize_t(pos);
  if (p < 0 || p >= PyList_GET_SIZE(out)) {
    PyErr_Clear();
    return false;
  }
  Py_INCREF(g);
  PyList_SetItem(out, p, g);  // (steals g; releases the marker, which stays alive)
  return true;
}

// stepplan._walk(node, g, out): 1 True, 0 False, -1 only the Python walk can say (a
// mapping that is not exactly a dict or a StateTree, keys that are not str or int, a
// node not of stepplan's form). Every object read here is held while it is used.
int walk(PyObject* node, PyObject* g, PyObject* out, PyObject* tree_type, int depth) {
  if (depth > 200 || !PyTuple_CheckExact(node) || PyTuple_GET_SIZE(node) < 1) return -1;
  long kind = PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
  if (kind == NODE_LEAF)
    return PyTuple_GET_SIZE(node) == 2 && put_at(out, PyTuple_GET_ITEM(node, 1), g) ? 1 : -1;
  if (kind == NODE_IGNORE || g == Py_None) return 1;
  if (kind == NODE_NOGRAD) return 0;
  if (kind == NODE_SEQ) {
    if (PyTuple_GET_SIZE(node) != 3 || !PyList_CheckExact(PyTuple_GET_ITEM(node, 1))) return -1;
    PyObject* kids = PyTuple_GET_ITEM(node, 1);
    if (!PyList_CheckExact(g) && !PyTuple_CheckExact(g)) return 0;
    Py_ssize_t n = PyList_GET_SIZE(kids);
    if (Py_SIZE(g) != n) return 0;
    PyObject** items = PyList_CheckExact(g) ? reinterpret_cast<PyListObject*>(g)->ob_item
                                            : reinterpret_cast<PyTupleObject*>(g)->ob_item;
    PyObject* run = PyTuple_GET_ITEM(node, 2);
    if (PyTuple_CheckExact(run) && PyTuple_GET_SIZE(run) == 2) {
      // every child a leaf, at positions run[0], run[0] + 1, ...: out[a:b] = g
      Py_ssize_t a = PyLong_AsSsize_t(PyTuple_GET_ITEM(run, 0));
      if (a < 0 || a + n > PyList_GET_SIZE(out)) {
        PyErr_Clear();
        return -1;
      }
      PyObject** dst = reinterpret_cast<PyListObject*>(out)->ob_item + a;
      for (Py_ssize_t i = 0; i < n; i++) {
        PyObject* old = dst[i];  // None or the marker: releasing it runs no code
        dst[i] = Py_NewRef(items[i]);
        Py_XDECREF(old);
      }
      return 1;
    }
    std::vector<PyObject*> held(items, items + n);
    for (PyObject* o : held) Py_INCREF(o);
    int r = 1;
    for (Py_ssize_t i = 0; i < n && r == 1; i++)
      r = walk(PyList_GET_ITEM(kids, i), held[static_cast<size_t>(i)], out, tree_type, depth + 1);
    for (PyObject* o : held) Py_DECREF(o);
    return r;
  }
  if (kind != NODE_DICT && kind != NODE_MOD) return -1;
  if (PyTuple_GET_SIZE(node) != 3 || !PyTuple_CheckExact(PyTuple_GET_ITEM(node, 1))
      || !PyList_CheckExact(PyTuple_GET_ITEM(node, 2)))
    return -1;
  PyObject* keys = PyTuple_GET_ITEM(node, 1);
  PyObject* kids = PyTuple_GET_ITEM(node, 2);
  PyObject* d;
  if (reinterpret_cast<PyObject*>(Py_TYPE(g)) == tree_type) {
    d = PyObject_GetAttr(g, name_children);
    if (d == nullptr) {
      PyErr_Clear();
      return -1;
    }
  } else if (PyDict_CheckExact(g)) {
    d = Py_NewRef(g);
  } else {
    return -1;  // another Mapping (its get() decides) or no mapping at all: Python says
  }
  int r = 1;
  if (!PyDict_CheckExact(d) || PyList_GET_SIZE(kids) != PyTuple_GET_SIZE(keys)) r = -1;
  else if (PyDict_GET_SIZE(d) != PyTuple_GET_SIZE(keys)) r = 0;
  for (Py_ssize_t i = 0; r == 1 && i < PyTuple_GET_SIZE(keys); i++) {
    PyObject* key = PyTuple_GET_ITEM(keys, i);
    // (str and int keys: their hash and == run no Python code)
    if (!PyUnicode_CheckExact(key) && !PyLong_CheckExact(key)) {
      r = -1;
      break;
    }
    PyObject* sub = PyDict_GetItemWithError(d, key);
    if (sub == nullptr) {
      r = PyErr_Occurred() ? -1 : 0;
      PyErr_Clear();
      break;
    }
    Py_INCREF(sub);
    r = walk(PyList_GET_ITEM(kids, i), sub, out, tree_type, depth + 1);
    Py_DECREF(sub);
  }
  Py_DECREF(d);
  return r;
}

// walk(root, grads, out, StateTree): True/False as stepplan._walk answers (out filled
// as it fills it), None where only the Python walk can say (out then partly filled).
PyObject* plan_walk(PyObject*, PyObject* args) {
  PyObject *root, *g, *out, *tree_type;
  if (!PyArg_ParseTuple(args, "OOOO", &root, &g, &out, &tree_type)) return nullptr;
  if (!PyList_CheckExact(out) || !PyType_Check(tree_type)) Py_RETURN_NONE;
  int r = walk(root, g, out, tree_type, 0);
  if (r < 0) Py_RETURN_NONE;
  if (r) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
}

// The items of an exact list or tuple, in *items (false for anything else).
bool items_of(PyObject* o, PyObject*** items) {
  if (PyList_CheckExact(o)) {
    *items = reinterpret_cast<PyListObject*>(o)->ob_item;
    return true;
  }
  if (PyTuple_CheckExact(o)) {
    *items = reinterpret_cast<PyTupleObject*>(o)->ob_item;
    return true;
  }
  return false;
}

// Whether two lists or tuples hold the very same objects, in order; None for other
// types. Compares pointers only.
PyObject* identical(PyObject*, PyObject* args) {
  PyObject *a, *b;
  if (!PyArg_ParseTuple(args, "OO", &a, &b)) return nullptr;
  PyObject** ia = nullptr;
  PyObject** ib = nullptr;
  if (!items_of(a, &ia) || !items_of(b, &ib)) Py_RETURN_NONE;
  Py_ssize_t n = Py_SIZE(a);
  if (Py_SIZE(b) != n) Py_RETURN_FALSE;
  for (Py_ssize_t i = 0; i < n; i++)
    if (ia[i] != ib[i]) Py_RETURN_FALSE;
  Py_RETURN_TRUE;
}

PyObject* fingerprint(PyObject*, PyObject* list) { GUARDED(return fingerprint_(list);) }
PyObject* like(PyObject*, PyObject* list) { GUARDED(return like_(list);) }
PyObject* addresses(PyObject*, PyObject* list) { GUARDED(return addresses_(list);) }
PyObject* all_contiguous(PyObject*, PyObject* list) {
  GUARDED(return all_of(list, [](const at::Tensor& t) { return t.is_contiguous(); });)
}
PyObject* all_float_or_complex(PyObject*, PyObject* list) {
  GUARDED(return all_of(
      list, [](const at::Tensor& t) { return t.is_floating_point() || t.is_complex(); });)
}
PyObject* all_require_grad(PyObject*, PyObject* list) {
  GUARDED(return all_of(list, [](const at::Tensor& t) { return t.requires_grad(); });)
}

PyObject* any_requires_grad(PyObject*, PyObject* list) {
  GUARDED(
      PyObject* none = all_of(list, [](const at::Tensor& t) { return !t.requires_grad(); });
      if (none == Py_None) return none;
      bool any = none == Py_False;
      Py_DECREF(none);
      return PyBool_FromLong(any);)
}

// leaves[i].state = states[i] for every i, in order, as setattr does (an error stops
// there and is raised): True. None if the arguments are not two lists of one length.
PyObject* store_states(PyObject*, PyObject* args) {
  PyObject *leaves, *states;
  if (!PyArg_ParseTuple(args, "OO", &leaves, &states)) return nullptr;
  if (!PyList_Check(leaves) || !PyList_Check(states)
      || PyList_GET_SIZE(leaves) != PyList_GET_SIZE(states))
    Py_RETURN_NONE;
  // leaves of the first one's type with a plain state slot: written there, as setattr's
  // member descriptor would (a new reference in, the old one released)
  PyTypeObject* tp = PyList_GET_SIZE(leaves) ? Py_TYPE(PyList_GET_ITEM(leaves, 0)) : nullptr;
  Py_ssize_t ostate = tp != nullptr ? slot_offset(tp, name_state, true) : -1;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(leaves) && i < PyList_GET_SIZE(states); i++) {
    PyObject* leaf = PyList_GET_ITEM(leaves, i);
    PyObject* st = PyList_GET_ITEM(states, i);
    // (releasing the old state, or setting, may run Python code: a finalizer, a Leaf
    // subclass's property; both held meanwhile, the lists re-read each time)
    Py_INCREF(leaf);
    Py_INCREF(st);
    int r = 0;
    if (ostate >= 0 && Py_TYPE(leaf) == tp) {
      PyObject* old = slot_at(leaf, ostate);
      slot_at(leaf, ostate) = st;  // takes the reference held above
      Py_XDECREF(old);
    } else {
      r = PyObject_SetAttr(leaf, name_state, st);
      Py_DECREF(st);
    }
    Py_DECREF(leaf);
    if (r < 0) return nullptr;
  }
  Py_RETURN_TRUE;
}

// The list length from which reads run on several threads; sets it to n if n > 0 and
// returns the previous one (0 reads it). 0 also when built without OpenMP.
PyObject* parallel_threshold(PyObject*, PyObject* args) {
  Py_ssize_t n = 0;
  if (!PyArg_ParseTuple(args, "|n", &n)) return nullptr;
#ifdef _OPENMP
  Py_ssize_t was = parallel_min;
  if (n > 0) parallel_min = n;
  return PyLong_FromSsize_t(was);
#else
  return PyLong_FromSsize_t(0);
#endif
}

PyObject* abi(PyObject*, PyObject*) { return PyLong_FromLong(FLUXTRAIN_TENSORMETA_ABI); }

PyMethodDef methods[] = {
    {"fingerprint", fingerprint, METH_O, "Type, address, dtype, device, shape, layout, inference."},
    {"like", like, METH_O, "Dtype, device and shape of each tensor."},
    {"addresses", addresses, METH_O, "data_ptr() of each tensor, as a list."},
    {"all_contiguous", all_contiguous, METH_O, "Whether every tensor is contiguous."},
    {"all_float_or_complex", all_float_or_complex, METH_O,
     "Whether every tensor is floating-point or complex."},
    {"all_require_grad", all_require_grad, METH_O, "Whether every tensor requires grad."},
    {"any_requires_grad", any_requires_grad, METH_O, "Whether some tensor requires grad."},
    {"gradient_reads", gradient_reads, METH_VARARGS,
     "(like bytes, addresses, all contiguous) of tensors of exactly the given types "
     "(addresses: the list given third if it holds exactly these)."},
    {"slot_addresses", slot_addresses, METH_VARARGS,
     "Data addresses of the states' tensors (one or two slots), as bytes."},
    {"restate", restate, METH_VARARGS, "New (m, v, beta_t) tuples of a NamedTuple type."},
    {"leaf_states", leaf_states, METH_VARARGS,
     "The states of leaves that all hold one rule, unfrozen (else None)."},
    {"identical", identical, METH_VARARGS, "Whether two lists hold the same objects."},
    {"plan_walk", plan_walk, METH_VARARGS,
     "stepplan._walk over the compiled nodes (None: only the Python walk can say)."},
    {"entries_unchanged", entries_unchanged, METH_VARARGS,
     "Whether recorded dicts and modules still hold the recorded entries (None: unsure)."},
    {"gradient_check", gradient_check, METH_VARARGS,
     "The native step's gradient overlap and back-to-back checks, and the address array."},
    {"grads_by_id", grads_by_id, METH_VARARGS,
     "The gradients stored under id(x) for xs, if all are plain tensors (else None)."},
    {"values_if_keys", values_if_keys, METH_VARARGS,
     "A dict's values if its keys are exactly the given objects in order (else None)."},
    {"store_states", store_states, METH_VARARGS, "leaves[i].state = states[i] for every i."},
    {"parallel_threshold", parallel_threshold, METH_VARARGS,
     "The list length from which reads use several threads (n > 0: set it)."},
    {"abi", abi, METH_NOARGS, "The interface version."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "fluxtrain_tensormeta", nullptr, -1, methods,
                      nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit_fluxtrain_tensormeta(void) {
  name_readonly = PyUnicode_InternFromString("_fluxtrain_readonly");
  name_rule = PyUnicode_InternFromString("rule");
  name_state = PyUnicode_InternFromString("state");
  name_frozen = PyUnicode_InternFromString("frozen");
  name_parameters = PyUnicode_InternFromString("_parameters");
  name_modules = PyUnicode_InternFromString("_modules");
  name_children = PyUnicode_InternFromString("_children");
  if (!name_readonly || !name_rule || !name_state || !name_frozen || !name_parameters
      || !name_modules || !name_children)
    return nullptr;
  return PyModule_Create(&module);
}
