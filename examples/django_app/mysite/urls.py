from django.urls import path

from . import views

urlpatterns = [
    path("", views.home),
    path("api/time", views.server_time),
    path("report", views.report),
]
