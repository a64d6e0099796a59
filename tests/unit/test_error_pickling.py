"""A ChatdError crosses process boundaries (a cluster's replica to its ingress): pickled, it
keeps its status, message, type, headers and extra body fields."""

import pickle

from chatd.models.errors import ModelLoading
from chatd.server.errors import STATUS, ChatdError, as_chatd


def test_a_chatd_error_survives_pickling_whole():
    err = ChatdError(503, "loading", "loading", {"x-should-retry": "false"}, estimated_time=2.5)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ChatdError
    assert (back.status, back.message, back.error_type) == (503, "loading", "loading")
    assert back.headers == {"x-should-retry": "false"}
    assert back.body() == {"error": "loading", "error_type": "loading", "estimated_time": 2.5}


def test_every_mapped_error_survives_pickling():
    err = as_chatd(ModelLoading("Model m is currently loading", 3.0))
    assert ModelLoading in STATUS
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.body(), back.headers) == (err.status, err.body(), err.headers)
