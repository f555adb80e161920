"""Who may read the fleet and who may steer it, asked of Airflow's own auth manager.

A plugin's FastAPI app gets no authentication from Airflow by itself: every route of the
dashboard depends on one of these two. Reading is what edge3's pages ask for, access to the
Jobs view. Acting also needs the right to edit pools: Airflow's views have no edit right, and
pools (the scheduler's slots) are the nearest thing Airflow has to the workers' slots and
queues, edited by the same people (Op and Admin in SimpleAuthManager and FAB).
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, HTTPException, status

READ_VIEW = AccessView.JOBS


def may_read(manager: BaseAuthManager, user: BaseUser) -> bool:
    return manager.is_authorized_view(access_view=READ_VIEW, user=user)


def may_act(manager: BaseAuthManager, user: BaseUser) -> bool:
    return may_read(manager, user) and manager.is_authorized_pool(method="PUT", user=user)


def reader(user: GetUserDep) -> BaseUser:
    if not may_read(get_auth_manager(), user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "Forbidden: reading the fleet needs access to the Jobs view"
        )
    return user


def actor(user: GetUserDep) -> BaseUser:
    if not may_act(get_auth_manager(), user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "Forbidden: acting on workers needs access to the Jobs view and the right to edit "
            "pools",
        )
    return user


Reader = Annotated[BaseUser, Depends(reader)]
Actor = Annotated[BaseUser, Depends(actor)]
