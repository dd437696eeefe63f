"""Optuna's RDB storage with bulk trial reads through SQLAlchemy Core instead of the ORM.

Reading a study's trials is what `show`, the dashboard's study page and TPE's history all do, and
Optuna builds one mapped ORM object per stored row: about 35,000 for 1,000 trials of this project
(params, user attrs, artifact records, intermediate values), 3-5 s on a 2-core machine. The same
rows through Core queries, with each distribution JSON parsed once, make identical `FrozenTrial`s
several times faster. Only `_get_trials` (the bulk read behind `get_all_trials` and the cached
storage's refresh) is replaced; every write and single-trial read is Optuna's own, except two:
`set_trial_user_attrs` writes several user attrs through Optuna's own upsert in one transaction
(a trial records about 15: one commit each cost 4 ms on SQLite), and taking a queued trial
(WAITING -> RUNNING) is one conditional UPDATE (see `set_trial_state_values`).
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from collections.abc import Container
from typing import Any

from optuna.distributions import json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import or_, select, update

# Optuna 5 stores naive UTC and shows naive local time; earlier versions store what they show
_UTC_COLUMNS = hasattr(models.TrialModel, "_datetime_start_utc")


class FastReadRDBStorage(RDBStorage):
    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        included = {i for i in included_trial_ids if i <= trial_id_greater_than}
        trials = models.TrialModel.__table__
        where = [trials.c.study_id == study_id]
        if states is not None:
            # Optuna types `states` as a Container, not an iterable: ask each state instead of iterating
            where.append(trials.c.state.in_([s for s in TrialState if s in states]))
        if included and trial_id_greater_than > -1:
            where.append(or_(trials.c.trial_id.in_(included), trials.c.trial_id > trial_id_greater_than))
        elif trial_id_greater_than > -1:
            where.append(trials.c.trial_id > trial_id_greater_than)
        # the children are selected by a subquery, not an IN list, so no database's parameter limit applies
        ids = select(trials.c.trial_id).where(*where)

        studies = models.StudyModel.__table__
        with self.engine.connect() as conn:
            if conn.execute(select(studies.c.study_id).where(studies.c.study_id == study_id)).first() is None:
                raise KeyError(models.NOT_FOUND_MSG)
            rows = conn.execute(
                select(
                    trials.c.trial_id,
                    trials.c.number,
                    trials.c.state,
                    trials.c.datetime_start,
                    trials.c.datetime_complete,
                )
                .where(*where)
                .order_by(trials.c.trial_id)
            ).all()
            params = _children(
                conn, models.TrialParamModel, ids, "param_id", "param_name", "param_value", "distribution_json"
            )
            values = _children(conn, models.TrialValueModel, ids, "trial_value_id", "objective", "value", "value_type")
            user = _children(conn, models.TrialUserAttributeModel, ids, "trial_user_attribute_id", "key", "value_json")
            system = _children(
                conn, models.TrialSystemAttributeModel, ids, "trial_system_attribute_id", "key", "value_json"
            )
            inter = _children(
                conn,
                models.TrialIntermediateValueModel,
                ids,
                "trial_intermediate_value_id",
                "step",
                "intermediate_value",
                "intermediate_value_type",
            )

        dists: dict[str, Any] = {}

        def dist(text: str):
            if text not in dists:
                dists[text] = json_to_distribution(text)
            return dists[text]

        out = []
        for trial_id, number, state, start, complete in rows:
            vals = None
            if values[trial_id]:
                vals = [0.0] * len(values[trial_id])
                for objective, value, kind in values[trial_id]:
                    vals[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
            ps = params[trial_id]
            out.append(
                FrozenTrial(
                    number=number,
                    state=state,
                    value=None,
                    values=vals,
                    datetime_start=_local(start),
                    datetime_complete=_local(complete),
                    params={name: dist(d).to_external_repr(v) for name, v, d in ps},
                    distributions={name: dist(d) for name, _, d in ps},
                    user_attrs={k: json.loads(v) for k, v in user[trial_id]},
                    system_attrs={k: json.loads(v) for k, v in system[trial_id]},
                    intermediate_values={
                        step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(v, kind)
                        for step, v, kind in inter[trial_id]
                    },
                    trial_id=trial_id,
                )
            )
        return out

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        """Optuna's, except that a queued trial is taken (WAITING -> RUNNING) by one UPDATE ... WHERE
        state = 'WAITING': Optuna reads the state and then writes it, which SQLite does not lock
        (`SELECT ... FOR UPDATE` is PostgreSQL's), so two `--workers` that popped the queue at the same
        moment both got the same trial and trained it twice; the second to finish then failed with
        "Cannot tell a COMPLETE trial". Here exactly one of them gets it, the other takes the next."""
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        now = datetime.datetime.now()
        start = now.astimezone(datetime.UTC).replace(tzinfo=None) if _UTC_COLUMNS else now
        trials = models.TrialModel.__table__
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(trials)
                .where(trials.c.trial_id == trial_id, trials.c.state == TrialState.WAITING)
                .values(state=TrialState.RUNNING, datetime_start=start)
            )
        return taken.rowcount == 1

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """`set_trial_user_attr` for every item, committed once."""
        with _create_scoped_session(self.scoped_session, True) as session:
            for key, value in attrs.items():
                self._set_trial_attr_without_commit(session, models.TrialUserAttributeModel, trial_id, key, value)


def _children(conn, model, ids, order: str, *columns: str) -> dict[int, list[tuple]]:
    """`columns` of the rows of `model`'s table that belong to the selected trials, per trial, in row order."""
    table = model.__table__
    rows = conn.execute(
        select(table.c.trial_id, *(table.c[c] for c in columns))
        .where(table.c.trial_id.in_(ids))
        .order_by(table.c[order])
    )
    out: dict[int, list[tuple]] = defaultdict(list)
    for trial_id, *rest in rows:
        out[trial_id].append(tuple(rest))
    return out


def _local(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is None or not _UTC_COLUMNS:
        return value
    return value.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


__all__ = ["FastReadRDBStorage"]
