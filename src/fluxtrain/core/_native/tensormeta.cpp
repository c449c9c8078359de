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
//                index, dim, contiguous, inference, sizes[dim], then strides[dim]
//                only if not contiguous
//   like:        dtype, device type, device index, dim, sizes[dim]
// and all_contiguous / all_float_or_complex / all_require_grad / any_requires_grad: one
// bool for the list.
// Equal bytes therefore mean equal fields, tensor by tensor.
//
// Built by fluxtrain.core.tensormeta against the installed torch (its headers and
// libraries), cached like the step kernel; a build that fails only means the Python
// route.
#include <Python.h>

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/python_variable.h>

#define FLUXTRAIN_TENSORMETA_ABI 3

namespace {

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

// Every entry point: a C++ exception (a tensor kind without storage or strides) must
// not cross into Python's C code; the answer is then None (the Python route decides).
#define GUARDED(...)   \
  try {                \
    __VA_ARGS__        \
  } catch (...) {      \
    Py_RETURN_NONE;    \
  }

PyObject* fingerprint_(PyObject* list) {
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  std::vector<int64_t> w;
  w.reserve(ts.size() * 12);
  Py_ssize_t i = 0;
  for (const at::Tensor* t : ts) {
    PyObject* o = PyList_GET_ITEM(list, i++);
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
    for (int64_t k = 0; k < d; k++) w.push_back(t->size(k));
    if (!contig)
      for (int64_t k = 0; k < d; k++) w.push_back(t->stride(k));
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
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  std::vector<long long> ptrs;  // all read first: a throw leaves nothing half-built
  ptrs.reserve(ts.size());
  for (const at::Tensor* t : ts) ptrs.push_back(reinterpret_cast<long long>(t->data_ptr()));
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

// Whether pred holds for every tensor of the list (None: not a list of tensors).
template <typename Pred>
PyObject* all_of(PyObject* list, Pred pred) {
  std::vector<const at::Tensor*> ts;
  if (!tensors_of(list, ts)) Py_RETURN_NONE;
  for (const at::Tensor* t : ts)
    if (!pred(*t)) Py_RETURN_FALSE;
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
    {"abi", abi, METH_NOARGS, "The interface version."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "fluxtrain_tensormeta", nullptr, -1, methods,
                      nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit_fluxtrain_tensormeta(void) { return PyModule_Create(&module); }
