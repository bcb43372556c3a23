from django.contrib import admin

from example_project.shipping.models import Shipment

admin.site.register(Shipment)
