from django.contrib import admin

from example_project.shop.models import Order, Stock

admin.site.register(Order)
admin.site.register(Stock)
